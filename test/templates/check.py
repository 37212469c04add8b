"""Checks capwin's clusterctl templates (templates/cluster-template-*.yaml). Run by check.sh.

    check.py [--pslint-python PY] [--no-fixtures] [TEMPLATE...]

For every template:

  validate     test/manifests/validate.py --default-vars on the template (CRs against the real
               CRDs, built-in kinds with kubernetes-validate, unknown fields are errors)
  addons       every manifest stream embedded in a ConfigMap's data (and, recursively, in the
               ConfigMaps those manifests create) validated the same way; documents whose kind has
               no schema here (Calico's crd.projectcalico.org IPAMConfig) are listed as
               "skipped: no schema"
  scripts      PowerShell (.ps1 keys) parsed with the tree-sitter grammar plus a Windows
               PowerShell 5.1 check (pslint.py), shell scripts with `sh -n`, JSON keys parsed
  namespace    every object sits in ${NAMESPACE} (or is cluster-scoped)
  variables    every ${...} is ${NAME} or ${NAME:=default} with an UPPER_SNAKE name, documented in
               templates/README.md with the same default (per flavour where the table gives one
               per flavour), one default per name, and none of the sequences drone/envsubst
               (clusterctl's substitution) rewrites: $$, a backslash before a backslash or a slash
  helm         every HelmChartProxy (CAAPH) selects the Cluster (addons=<name> plus labels the
               Cluster carries, "true" for opt-ins), pins its chart version, and its valuesTemplate
               renders (gotemplate.py, CAAPH's Go template subset) on the template's own Cluster,
               with the controlPlaneEndpoint CAPZ/CAPA set, into a YAML mapping with no <no value>
  calico       for the Calico flavours, the rendered tigera-operator values: windowsDataplane HNS,
               BGP off, VXLAN pools = the Cluster's pod CIDRs and serviceCIDRs = its service CIDRs
               (also for a Cluster with other CIDRs: nothing is hard-coded), kubernetesServiceEndpoint
               = the Cluster's controlPlaneEndpoint, and none for a Cluster without one or with a
               host and no port, a dnsConfig with nameservers, the cloud's MTU, Felix VXLAN VNI
               4096 on port 4789; IPAMConfig strictAffinity applied by a Reconcile ClusterResourceSet
  forbidden    no Job or CronJob, no (Cluster)RoleBinding to cluster-admin, no run-time download of
               manifests (a URL of a .yaml/.yml/.json file or raw.githubusercontent.com anywhere but
               a HelmChartProxy's repoURL), anywhere in the template or its addons
  images       every image reference (pod specs, top-level and embedded, and image/tag/imageTag in
               valuesTemplates) has a tag or digest, not latest, and every ${VAR} in it a default
               (KUBERNETES_VERSION, which clusterctl always sets, excepted); every HelmChartProxy
               pins spec.version
  structure    one Cluster whose refs resolve; one MachineDeployment with a WindowsKubeadmConfig-
               Template (no windows.cni.vxlan: the VNI lives in the addons) and a capwin
               infrastructure template; one MachineHealthCheck selecting its Machines;
               ClusterResourceSets selecting the Cluster, their ConfigMaps present; the addons the
               flavour needs (CNI matching the CNI flavour and the Cluster's CIDRs, VNI 4096 stated,
               kube-proxy-windows naming the CNI's HNS network and running capwin's start.ps1,
               cloud provider chart, RuntimeClasses, opt-in csi-proxy, Hyper-V RuntimeClass only
               on nodes labelled for it, gMSA with cert-manager); copies of the Cluster's CIDRs
               agree; every ConfigMap an addon pod reads is created by an addon or by kubeadm;
               Windows DaemonSets are HostProcess and tolerate the os taint; AWS opens VXLAN and
               Typha
  metadata-egress
               pods cannot reach the cloud's metadata endpoints and can reach the rest
               (METADATA_PROBES: Azure 168.63.129.16 TCP 80 denied, its 53 and 32526 and the
               instance metadata service open; AWS 169.254.169.254 and fd00:ec2::254 denied on every
               port, the Amazon DNS and time service open), evaluated the way the dataplane does:
               Calico flavours by a crd.projectcalico.org/v1 GlobalNetworkPolicy in a Tier of its
               own ordered before the admin and default tiers, Egress only, selecting workload
               endpoints only (has(projectcalico.org/namespace), so host-network and HostProcess pods
               and the node are not covered), rules Windows renders, no Allow (it would override the
               NetworkPolicies), ending in Pass, applied by a Reconcile ClusterResourceSet every
               cluster gets; flannel by HNS ACLs in every Windows CNI configuration (HCN
               {Type, Settings} form for sdnoverlay/sdnbridge, lowest priority wins, no ties between
               Block and Allow, Block as a Switch rule, an inbound Allow)

Then: gotemplate.py's own cases; addon ConfigMaps (top-level and embedded) and HelmChartProxies
shared by several templates must be identical; and negative cases (a fixture with a typo in a
field, and mutations of the real templates) must each be caught by the check that is meant to
catch them. Ends with `templates checks: N passed, M failed`.
"""
import argparse
import fnmatch
import glob
import ipaddress
import json
import os
import re
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # no __pycache__ next to validate.py or here
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
VALIDATE = os.path.join(REPO, 'test', 'manifests', 'validate.py')
README = os.path.join(REPO, 'templates', 'README.md')
sys.path.insert(0, os.path.dirname(VALIDATE))
import validate as V  # noqa: E402  (the validator's YAML loader, substitution and schema registries)
sys.path.insert(0, HERE)
import pslint  # noqa: E402  (its Windows PowerShell 5.1 check needs no grammar)
import gotemplate  # noqa: E402  (CAAPH's valuesTemplate rendering, without Go)

K8S = '1.34'
NS_SENTINEL = 'capwin-ns-sentinel'

CAPWIN_INFRA_KINDS = {'AzureWindowsMachineTemplate', 'AWSWindowsMachineTemplate'}
OPT_IN = {'csi-proxy': 'capwin.cluster.x-k8s.io/csi-proxy', 'hyperv': 'capwin.cluster.x-k8s.io/hyperv',
          'gmsa': 'capwin.cluster.x-k8s.io/gmsa'}
ADDONS_LABEL = 'capwin.cluster.x-k8s.io/addons'
HYPERV_NODE_LABEL = 'capwin.cluster.x-k8s.io/hyperv-isolation'
WINDOWS_VNI = 4096  # flannel's and Calico's Windows VXLAN network identifier
VXLAN_PORT = 4789   # the only VXLAN port Windows accepts
TYPHA_PORT = 5473
# The Calico MTU each cloud's flavour sets (Azure: CAPZ's 1350; AWS: 1500 - 50 of VXLAN).
CALICO_MTU = {'AzureWindowsMachineTemplate': 1350, 'AWSWindowsMachineTemplate': 1450}
# The chart of each cloud's cloud provider (HelmChartProxy chartName).
CLOUD_CHART = {'AzureWindowsMachineTemplate': 'cloud-provider-azure',
               'AWSWindowsMachineTemplate': 'aws-cloud-controller-manager'}
# What CAPZ / CAPA write into Cluster.spec.controlPlaneEndpoint before CAAPH renders values.
PROBE_ENDPOINT = {'host': 'win1-0a1b2c3d.westeurope.cloudapp.azure.com', 'port': 6443}
# Another Cluster network, to show the rendered values follow the Cluster (nothing hard-coded).
PROBE_NETWORK = {'pods': {'cidrBlocks': ['172.20.0.0/16']}, 'services': {'cidrBlocks': ['10.128.0.0/16']}}
# Image variables without a default that still pin: clusterctl always sets them (required).
REQUIRED_PINNING_VARIABLES = {'KUBERNETES_VERSION'}
# Built-in kinds that are cluster-scoped (the CRD kinds' scope comes from their CRDs).
CLUSTER_SCOPED_BUILTINS = {'Namespace', 'ClusterRole', 'ClusterRoleBinding', 'RuntimeClass',
                           'CustomResourceDefinition', 'PriorityClass', 'StorageClass',
                           'CSIDriver', 'PersistentVolume', 'Node', 'IngressClass',
                           'ValidatingWebhookConfiguration', 'MutatingWebhookConfiguration'}
# Objects of the same name that legitimately differ between templates: the Calico values (the
# cloud's MTU and resolver, Azure's checksum-offload workaround).
MAY_DIFFER = {'HelmChartProxy/placeholder-calico'}

VAR_ANY = re.compile(r'\$\{[^}]*\}?')
VAR_OK = re.compile(r'\$\{([A-Z][A-Z0-9_]*)(?::=([^${}]*))?\}')
ENVSUBST_ESCAPES = [('$$', 'clusterctl (drone/envsubst) turns $$ into $'),
                    ('\\\\', 'clusterctl (drone/envsubst) turns two backslashes into one'),
                    ('\\/', 'clusterctl (drone/envsubst) turns a backslash-slash into a slash')]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def load_stream(text):
    """[(doc index, object)] for the non-empty documents; ValueError on a YAML error."""
    out = []
    for idx, obj, _dups, err in V.load_documents(text):
        if err:
            raise ValueError(err)
        if obj is not None:
            out.append((idx, V.to_json_like(obj)))
    return out


def split_documents(text):
    """The text of each YAML document, the way the loader counts them (a leading `---` opens
    an empty document 0)."""
    parts, cur = [], []
    for line in text.splitlines(keepends=True):
        if re.match(r'^---\s*$', line):
            parts.append(''.join(cur))
            cur = []
        else:
            cur.append(line)
    parts.append(''.join(cur))
    return parts


def meta(obj):
    return obj.get('metadata') if isinstance(obj.get('metadata'), dict) else {}


def ident(obj):
    return '%s/%s' % (obj.get('kind'), meta(obj).get('name'))


class Stream:
    """A manifest stream found in a ConfigMap's data (label says where)."""

    def __init__(self, label, text, docs, crs_labels):
        self.label, self.text, self.docs, self.crs_labels = label, text, docs, crs_labels


class Script:
    def __init__(self, label, lang, text):
        self.label, self.lang, self.text = label, lang, text


class Template:
    def __init__(self, path):
        self.path = path
        self.name = os.path.basename(path)
        with open(path, encoding='utf-8') as f:
            self.raw = f.read()
        self.text = V.substitute(self.raw, {}, True, K8S)
        self.load_error = None
        try:
            self.docs = [obj for _, obj in load_stream(self.text)]
        except ValueError as e:
            self.docs, self.load_error = [], str(e)
        self.streams, self.scripts, self.stream_errors = [], [], []
        self._extract()

    def find(self, kind, name=None):
        return [o for o in self.docs if o.get('kind') == kind
                and (name is None or meta(o).get('name') == name)]

    def crs_selectors(self):
        """ConfigMap name -> the matchLabels of the ClusterResourceSet(s) applying it."""
        out = {}
        for crs in self.find('ClusterResourceSet'):
            spec = crs.get('spec') or {}
            labels = ((spec.get('clusterSelector') or {}).get('matchLabels')) or {}
            for r in spec.get('resources') or []:
                out.setdefault(r.get('name'), []).append(labels)
        return out

    def _extract(self):
        selectors = self.crs_selectors()

        def classify(key, value):
            if key.endswith('.ps1'):
                return 'ps1'
            if key.endswith('.json'):
                return 'json'
            if key.endswith('.sh') or value.startswith(('#!/bin/sh', '#!/bin/bash')):
                return 'sh'
            try:
                docs = load_stream(value)
            except ValueError as e:
                if key.endswith(('.yaml', '.yml')):
                    return ('yaml-error', str(e))
                return 'other'
            if docs and all(isinstance(d, dict) and 'apiVersion' in d and 'kind' in d
                            for _, d in docs):
                return ('manifests', docs)
            if key.endswith(('.yaml', '.yml')):
                return ('yaml-error', 'not a stream of Kubernetes objects')
            return 'other'

        def visit(label, cm, crs_labels):
            data = cm.get('data') or {}
            for key in sorted(data):
                value = data[key]
                if not isinstance(value, str):
                    continue
                where = '%s[%s]' % (label, key)
                kind = classify(key, value)
                if isinstance(kind, tuple) and kind[0] == 'manifests':
                    self.streams.append(Stream(where, value, [d for _, d in kind[1]], crs_labels))
                    for _, d in kind[1]:
                        if d.get('kind') == 'ConfigMap':
                            visit('%s > ConfigMap/%s' % (where, meta(d).get('name')), d, crs_labels)
                elif isinstance(kind, tuple):
                    self.stream_errors.append('%s: YAML: %s' % (where, kind[1]))
                elif kind != 'other':
                    self.scripts.append(Script(where, kind, value))

        for obj in self.docs:
            if obj.get('kind') == 'ConfigMap':
                name = meta(obj).get('name')
                visit('ConfigMap/%s' % name, obj, selectors.get(name, []))
            # Scripts the control-plane and Linux-worker bootstrap configs write.
            spec = obj.get('spec') or {}
            for holder in (spec.get('kubeadmConfigSpec'),
                           ((spec.get('template') or {}).get('spec'))):
                if not isinstance(holder, dict):
                    continue
                for i, f in enumerate(holder.get('files') or []):
                    content = f.get('content') if isinstance(f, dict) else None
                    if isinstance(content, str) and content.startswith(('#!/bin/sh', '#!/bin/bash')):
                        self.scripts.append(Script('%s files[%d] %s' % (ident(obj), i, f.get('path')),
                                                   'sh', content))


# --------------------------------------------------------------------------------------------
# Schema registries (the ones validate.py uses) and validate.py runs
# --------------------------------------------------------------------------------------------

BUILTINS = V.Builtins(K8S)
CRDS = V.CrdIndex()
for _p in V.DEFAULT_CRDS:
    CRDS.load_path(_p, explicit=False)


def has_schema(obj):
    group, version = V.split_api_version(str(obj.get('apiVersion', '')))
    kind = obj.get('kind')
    return (group, version, kind) in BUILTINS.gvks or CRDS.lookup(group, version, kind) is not None


def scope_of(obj):
    group, version = V.split_api_version(str(obj.get('apiVersion', '')))
    kind = obj.get('kind')
    if CRDS.lookup(group, version, kind) is not None:
        src = CRDS.lookup(group, version, kind).source
        with open(src, encoding='utf-8') as f:
            for _, crd in load_stream(f.read()):
                if V.is_crd(crd) and crd['spec']['names']['kind'] == kind:
                    return crd['spec'].get('scope', 'Namespaced')
    return 'Cluster' if kind in CLUSTER_SCOPED_BUILTINS else 'Namespaced'


def run_validate(paths, default_vars):
    """{path: [problem lines]} from one validate.py run (paths printed as given)."""
    args = [sys.executable, VALIDATE] + (['--default-vars'] if default_vars else []) + list(paths)
    p = subprocess.run(args, capture_output=True, text=True)
    lines = p.stdout.splitlines()
    if not lines or not lines[-1].startswith('manifests: '):
        raise RuntimeError('validate.py gave no summary (rc=%d): %s %s'
                           % (p.returncode, p.stdout[-2000:], p.stderr[-2000:]))
    out = {path: [] for path in paths}
    for line in lines[:-1]:
        for path in paths:
            if line.startswith(path + '#'):
                out[path].append(line[len(path):])
                break
        else:
            out.setdefault('?', []).append(line)
    return out, p.returncode


# --------------------------------------------------------------------------------------------
# The checks. Each returns a list of problems (strings); empty means it passed.
# --------------------------------------------------------------------------------------------

def check_validate(t, workdir):
    if t.load_error:
        return ['YAML: %s' % t.load_error]
    res, rc = run_validate([t.path], default_vars=True)
    problems = res.get(t.path, []) + res.get('?', [])
    if rc != 0 and not problems:
        problems.append('validate.py exited %d' % rc)
    return problems


def check_addons(t, workdir):
    """(problems, skips): every embedded manifest stream against the real schemas."""
    problems, skips = list(t.stream_errors), []
    files = {}
    for n, s in enumerate(t.streams):
        parts = split_documents(s.text)
        kept = []
        for idx, part in enumerate(parts):
            try:
                docs = load_stream(part)
            except ValueError as e:
                problems.append('%s#%d: YAML: %s' % (s.label, idx, e))
                kept.append('')
                continue
            obj = docs[0][1] if docs else None
            if isinstance(obj, dict) and not has_schema(obj):
                skips.append('%s#%d %s: skipped: no schema (%s is neither a built-in kind of '
                             'Kubernetes %s nor defined by a CRD in crds/ or shared/capi-crds/)'
                             % (s.label, idx, ident(obj), obj.get('apiVersion'), K8S))
                kept.append('')
            else:
                kept.append(part)
        path = os.path.join(workdir, '%s-addon-%02d.yaml' % (os.path.splitext(t.name)[0], n))
        with open(path, 'w', encoding='utf-8') as f:
            f.write('---\n'.join(kept))
        files[path] = s.label
    if files:
        res, _ = run_validate(list(files), default_vars=False)
        for path, label in files.items():
            for line in res.get(path, []):
                problems.append(label + line)
        problems.extend(res.get('?', []))
    return problems, skips


def check_scripts(t, workdir, pslint_python):
    problems, notes = [], []
    ps_files = {}
    for n, s in enumerate(t.scripts):
        if s.lang == 'json':
            try:
                json.loads(s.text)
            except ValueError as e:
                problems.append('%s: JSON: %s' % (s.label, e))
        elif s.lang == 'sh':
            path = os.path.join(workdir, '%s-script-%02d.sh' % (os.path.splitext(t.name)[0], n))
            with open(path, 'w', encoding='utf-8') as f:
                f.write(s.text)
            p = subprocess.run(['sh', '-n', path], capture_output=True, text=True)
            if p.returncode != 0:
                problems.append('%s: sh -n: %s' % (s.label, (p.stderr or p.stdout).strip().replace(path, 'script')))
        elif s.lang == 'ps1':
            path = os.path.join(workdir, '%s-script-%02d.ps1' % (os.path.splitext(t.name)[0], n))
            with open(path, 'w', encoding='utf-8') as f:
                f.write(s.text)
            ps_files[path] = s.label
    if ps_files:
        if not pslint_python:
            notes.append('PowerShell syntax not parsed (no --pslint-python, CAPWIN_SKIP_PSLINT=1): '
                         '%d scripts; Windows PowerShell 5.1 operators checked' % len(ps_files))
            for path, label in ps_files.items():
                with open(path, encoding='utf-8') as f:
                    for line, col, msg in pslint.ps7_only(f.read()):
                        problems.append('%s: line %d:%d: %s' % (label, line, col, msg))
        else:
            p = subprocess.run([pslint_python, os.path.join(HERE, 'pslint.py')] + list(ps_files),
                               capture_output=True, text=True)
            for line in p.stdout.splitlines():
                for path, label in ps_files.items():
                    if line.startswith(path + ':'):
                        problems.append('%s: line %s' % (label, line[len(path) + 1:]))
                        break
                else:
                    problems.append(line)
            if p.returncode not in (0, 1) or (p.returncode == 1 and not p.stdout.strip()):
                problems.append('pslint.py failed (rc=%d): %s' % (p.returncode, p.stderr.strip()[-500:]))
    if not t.scripts:
        notes.append('no scripts')
    return problems, notes


def check_namespace(t, workdir):
    text = V.substitute(t.raw, {'NAMESPACE': NS_SENTINEL}, True, K8S)
    try:
        docs = [obj for _, obj in load_stream(text)]
    except ValueError as e:
        return ['YAML: %s' % e]
    problems = []
    for obj in docs:
        ns = meta(obj).get('namespace')
        if scope_of(obj) == 'Cluster':
            if ns is not None:
                problems.append('%s is cluster-scoped but has metadata.namespace %r' % (ident(obj), ns))
        elif ns != NS_SENTINEL:
            problems.append('%s: metadata.namespace is %r, not ${NAMESPACE}' % (ident(obj), ns))
    return problems


def readme_variables():
    """{NAME: default or None} from the variables tables of templates/README.md. A default cell may
    give one default per flavour, "`2025` (azure-*), `2019` (aws-*)": then {glob: default}."""
    out = {}
    try:
        with open(README, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        m = re.match(r'^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|([^|]*)\|', line)
        if not m:
            continue
        cell = m.group(2).strip()
        per_flavour = re.findall(r'`([^`]*)`\s*\(([a-z0-9*-]+)\)', cell)
        if cell.lower().startswith(('required', 'set by clusterctl')):
            out[m.group(1)] = None
        elif per_flavour:
            out[m.group(1)] = {glob: default for default, glob in per_flavour}
        else:
            d = re.match(r'^`([^`]*)`', cell)
            out[m.group(1)] = d.group(1) if d else '<unparsed: %s>' % cell
    return out


def flavour_of(t):
    m = re.search(r'cluster-template-(.+)[.]yaml$', t.name)
    return m.group(1) if m else t.name


def documented_default(documented, name, flavour):
    d = documented.get(name)
    if isinstance(d, dict):
        for glob, default in d.items():
            if fnmatch.fnmatch(flavour, glob):
                return default
        return '<no default for flavour %s in templates/README.md>' % flavour
    return d


def template_variables(raw):
    """[(name, default or None)] for every occurrence; problems for malformed ones."""
    found, problems = [], []
    for m in VAR_ANY.finditer(raw):
        ok = VAR_OK.fullmatch(m.group(0))
        line = raw.count('\n', 0, m.start()) + 1
        if not ok:
            problems.append('line %d: %s is not ${NAME} or ${NAME:=default} with an UPPER_SNAKE '
                            'name (nested or other forms are not portable)' % (line, m.group(0)))
            continue
        found.append((ok.group(1), ok.group(2), line))
    return found, problems


def check_variables(t, workdir):
    found, problems = template_variables(t.raw)
    documented = readme_variables()
    defaults = {}
    for name, default, line in found:
        if name not in documented and name not in defaults:
            problems.append('line %d: ${%s} is not listed in templates/README.md' % (line, name))
        defaults.setdefault(name, set()).add(default)
    for name, ds in sorted(defaults.items()):
        if len(ds) > 1:
            problems.append('${%s} has different defaults in one template: %s (clusterctl gives '
                            'each occurrence its own default; one without becomes empty)'
                            % (name, ', '.join(sorted('none' if d is None else repr(d) for d in ds))))
        elif name in documented and documented_default(documented, name, flavour_of(t)) != next(iter(ds)):
            problems.append('${%s}: default in the template %r, in templates/README.md %r'
                            % (name, next(iter(ds)), documented_default(documented, name, flavour_of(t))))
    for seq, why in ENVSUBST_ESCAPES:
        at = t.raw.find(seq)
        if at >= 0:
            problems.append('line %d: %r: %s' % (t.raw.count('\n', 0, at) + 1, seq, why))
    return problems


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def all_addon_objects(t, want):
    """Objects of the streams whose ClusterResourceSet selector `want` accepts."""
    out = []
    for s in t.streams:
        if any(want(sel) for sel in s.crs_labels):
            out.extend(s.docs)
    return out


def pod_spec(obj):
    return (((obj.get('spec') or {}).get('template') or {}).get('spec')) or {}


def the_cluster(t):
    """The template's one Cluster, or a problem saying how many there are."""
    clusters = t.find('Cluster')
    if len(clusters) != 1:
        return None, '%d Cluster objects, want exactly 1' % len(clusters)
    return clusters[0], None


def check_structure(t, workdir):
    p = []
    cluster, problem = the_cluster(t)
    if problem:
        return [problem]
    cname = meta(cluster).get('name')
    cspec = cluster.get('spec') or {}
    clabels = meta(cluster).get('labels') or {}
    pods = (((cspec.get('clusterNetwork') or {}).get('pods') or {}).get('cidrBlocks')) or []
    services = (((cspec.get('clusterNetwork') or {}).get('services') or {}).get('cidrBlocks')) or []

    def resolve(ref, where, kinds=None):
        if not isinstance(ref, dict):
            p.append('%s: no reference' % where)
            return None
        if 'apiVersion' in ref:
            p.append('%s: has apiVersion (v1beta2 references carry apiGroup, kind, name)' % where)
        if kinds and ref.get('kind') not in kinds:
            p.append('%s: kind %s, want one of %s' % (where, ref.get('kind'), ', '.join(sorted(kinds))))
        objs = t.find(ref.get('kind'), ref.get('name'))
        if not objs:
            p.append('%s: %s/%s is not in the template' % (where, ref.get('kind'), ref.get('name')))
            return None
        group = V.split_api_version(objs[0].get('apiVersion', ''))[0]
        if ref.get('apiGroup') != group:
            p.append('%s: apiGroup %r, the object is %r' % (where, ref.get('apiGroup'), group))
        return objs[0]

    resolve(cspec.get('infrastructureRef'), 'Cluster.spec.infrastructureRef')
    kcp = resolve(cspec.get('controlPlaneRef'), 'Cluster.spec.controlPlaneRef')
    if kcp is not None:
        resolve((((kcp.get('spec') or {}).get('machineTemplate') or {}).get('spec') or {}).get('infrastructureRef'),
                '%s machineTemplate.spec.infrastructureRef' % ident(kcp))
    if not pods or not services:
        p.append('Cluster.spec.clusterNetwork needs pods and services CIDR blocks')

    windows_mds, wkct, infra = [], None, None
    for md in t.find('MachineDeployment'):
        spec = md.get('spec') or {}
        tspec = ((spec.get('template') or {}).get('spec')) or {}
        where = ident(md)
        if spec.get('clusterName') != cname or tspec.get('clusterName') != cname:
            p.append('%s: clusterName is not the Cluster\'s (%s)' % (where, cname))
        cref = ((tspec.get('bootstrap') or {}).get('configRef')) or {}
        if cref.get('kind') == 'WindowsKubeadmConfigTemplate':
            windows_mds.append(md)
            wkct = resolve(cref, where + ' bootstrap.configRef')
            infra = resolve(tspec.get('infrastructureRef'), where + ' infrastructureRef', CAPWIN_INFRA_KINDS)
        else:
            resolve(cref, where + ' bootstrap.configRef')
            resolve(tspec.get('infrastructureRef'), where + ' infrastructureRef')
    if len(windows_mds) != 1:
        p.append('%d MachineDeployments use a WindowsKubeadmConfigTemplate, want exactly 1' % len(windows_mds))

    mhcs = t.find('MachineHealthCheck')
    if len(mhcs) != 1:
        p.append('%d MachineHealthCheck objects, want exactly 1' % len(mhcs))
    elif windows_mds:
        mhc = mhcs[0]
        mspec = mhc.get('spec') or {}
        tlabels = ((((windows_mds[0].get('spec') or {}).get('template') or {}).get('metadata') or {})
                   .get('labels')) or {}
        sel = ((mspec.get('selector') or {}).get('matchLabels')) or {}
        if mspec.get('clusterName') != cname:
            p.append('%s: clusterName is not the Cluster\'s' % ident(mhc))
        if not sel or not labels_match(sel, tlabels):
            p.append('%s: selector %s does not select the Windows MachineDeployment\'s Machines (%s)'
                     % (ident(mhc), sel, tlabels))

    crss = t.find('ClusterResourceSet')
    if not crss:
        p.append('no ClusterResourceSet')
    referenced = set()
    for crs in crss:
        spec = crs.get('spec') or {}
        sel = ((spec.get('clusterSelector') or {}).get('matchLabels')) or {}
        p.extend(selector_problems(ident(crs), sel, cname, clabels))
        for r in spec.get('resources') or []:
            referenced.add((r.get('kind'), r.get('name')))
            if not t.find(r.get('kind'), r.get('name')):
                p.append('%s: resource %s/%s is not in the template' % (ident(crs), r.get('kind'), r.get('name')))
    for cm in t.find('ConfigMap'):
        if ('ConfigMap', meta(cm).get('name')) not in referenced:
            p.append('%s is applied by no ClusterResourceSet' % ident(cm))

    def is_base(sel):
        return not any(k in OPT_IN.values() for k in sel)

    base = all_addon_objects(t, is_base)

    def optin(label):
        return all_addon_objects(t, lambda sel: sel.get(OPT_IN[label]) == 'true')

    def has(objs, kind, name=None, ns=None):
        return [o for o in objs if o.get('kind') == kind and (name is None or meta(o).get('name') == name)
                and (ns is None or meta(o).get('namespace') == ns)]

    def need(objs, kind, name, ns, why):
        found = has(objs, kind, name, ns)
        if not found:
            p.append('addons: no %s %s/%s (%s)' % (kind, ns or '-', name, why))
        return found[0] if found else None

    def chart(name, why, optin_label=None):
        """The HelmChartProxy installing chart `name` for the Cluster (opt-in: by that label)."""
        for h in t.find('HelmChartProxy'):
            spec = h.get('spec') or {}
            sel = ((spec.get('clusterSelector') or {}).get('matchLabels')) or {}
            if spec.get('chartName') != name:
                continue
            if optin_label and sel.get(OPT_IN[optin_label]) != 'true':
                p.append('%s: chart %s is not selected by the opt-in label %s=true' % (ident(h), name, OPT_IN[optin_label]))
            if not optin_label and not is_base(sel):
                p.append('%s: chart %s is needed by every cluster but selected by an opt-in label' % (ident(h), name))
            return h
        p.append('addons: no HelmChartProxy for the %s chart (%s)' % (name, why))
        return None

    kp = need(base, 'DaemonSet', 'kube-proxy-windows', 'kube-system', 'kube-proxy for Windows')
    if not [o for o in has(base, 'RuntimeClass') if o.get('handler') == 'runhcs-wcow-process']:
        p.append('addons: no RuntimeClass with handler runhcs-wcow-process')
    hyperv = [o for o in has(optin('hyperv'), 'RuntimeClass') if o.get('handler') == 'runhcs-wcow-hypervisor']
    if not hyperv:
        p.append('addons: no opt-in (%s) RuntimeClass with handler runhcs-wcow-hypervisor' % OPT_IN['hyperv'])
    for rc in hyperv:
        sched = rc.get('scheduling') or {}
        sel = sched.get('nodeSelector') or {}
        if sel.get(HYPERV_NODE_LABEL) != 'true' or sel.get('kubernetes.io/os') != 'windows':
            p.append('%s: scheduling.nodeSelector %s must hold %s: "true" and kubernetes.io/os: windows '
                     '(only nodes with the handler)' % (ident(rc), sel, HYPERV_NODE_LABEL))
        if not any(x.get('key') == 'os' and x.get('effect') == 'NoSchedule' for x in sched.get('tolerations') or []):
            p.append('%s: does not tolerate os=windows:NoSchedule' % ident(rc))
    need(optin('csi-proxy'), 'DaemonSet', 'csi-proxy', 'kube-system', 'opt-in %s' % OPT_IN['csi-proxy'])
    chart('gmsa', 'opt-in gMSA webhook and GMSACredentialSpec CRD', 'gmsa')
    chart('cert-manager', 'the gMSA webhook\'s certificate', 'gmsa')

    wspec = (((wkct or {}).get('spec') or {}).get('template') or {}).get('spec') or {}
    windows = wspec.get('windows') or {}
    cni = windows.get('cni') or {}
    flavour = cni.get('flavour', 'calico-vxlan')
    if 'vxlan' in cni:
        p.append('%s: spec.template.spec.windows.cni.vxlan is set; the VNI lives in the addons only'
                 % ident(wkct))
    os_taint = (windows.get('node') or {}).get('osTaint', False)
    if flavour == 'calico-vxlan':
        chart('tigera-operator', 'Calico')
        if clabels.get('capwin.cluster.x-k8s.io/cni') != 'calico':
            p.append('Cluster: label capwin.cluster.x-k8s.io/cni is not calico')
        ipam = need(base, 'IPAMConfig', 'default', None, 'Calico IPAM strict affinity, which Windows requires')
        if ipam and (ipam.get('spec') or {}).get('strictAffinity') is not True:
            p.append('IPAMConfig default: strictAffinity is not true')
        if ipam:
            for s in t.streams:
                if ipam in s.docs and crs_strategy(t, s) != 'Reconcile':
                    p.append('IPAMConfig default: its ClusterResourceSet is not strategy Reconcile (Calico may '
                             'create the object first; ApplyOnce would leave strictAffinity unset)')
    elif flavour in ('flannel-vxlan', 'flannel-host-gw'):
        need(base, 'DaemonSet', 'kube-flannel-ds', None, 'flannel for Linux')
        need(base, 'DaemonSet', 'kube-flannel-ds-windows', None, 'flannel for Windows')
        cfg = need(base, 'ConfigMap', 'kube-flannel-cfg', None, 'flannel net-conf')
        if cfg:
            try:
                net = json.loads((cfg.get('data') or {}).get('net-conf.json', ''))
            except ValueError as e:
                net = {}
                p.append('kube-flannel-cfg net-conf.json: %s' % e)
            backend = net.get('Backend') or {}
            if [net.get('Network')] != pods:
                p.append('flannel Network %s != Cluster pods %s' % (net.get('Network'), pods))
            if flavour == 'flannel-vxlan' and (backend.get('Type') != 'vxlan' or backend.get('VNI') != WINDOWS_VNI
                                               or backend.get('Port') != VXLAN_PORT):
                p.append('flannel Backend %s does not state VNI %d and port %d (what flannel on Windows needs)'
                         % (backend, WINDOWS_VNI, VXLAN_PORT))
            if flavour == 'flannel-host-gw' and backend.get('Type') != 'host-gw':
                p.append('flannel Backend %s is not host-gw' % backend)
    else:
        p.append('WindowsKubeadmConfigTemplate cni flavour %r: no addon rule' % flavour)

    # kube-proxy must name the HNS network the CNI creates, and run capwin's script (not the
    # image's start.ps1 with its hard-coded feature gates).
    want_network = {'calico-vxlan': ['Calico'], 'flannel-vxlan': ['flannel.%d' % WINDOWS_VNI, ''],
                    'flannel-host-gw': ['cbr0', '']}.get(flavour, [])
    if kp:
        ps = pod_spec(kp)
        for c in ps.get('containers') or []:
            for e in c.get('env') or []:
                if e.get('name') == 'KUBE_NETWORK' and e.get('value', '') not in want_network:
                    p.append('%s: KUBE_NETWORK %r, but cni %s creates %s'
                             % (ident(kp), e.get('value'), flavour, ' or '.join(repr(x) for x in want_network)))
            words = [str(x) for x in (c.get('command') or []) + (c.get('args') or [])]
            if any('kube-proxy/start.ps1' in w for w in words) or not any('capwin/start.ps1' in w for w in words):
                p.append('%s container %s: runs %s, not capwin/start.ps1 (the image\'s start.ps1 hard-codes '
                         'feature gates)' % (ident(kp), c.get('name'), words))
        scripts = [(v.get('configMap') or {}).get('name') for v in ps.get('volumes') or [] if v.get('configMap')]
        if not [cm for cm in has(base, 'ConfigMap', None, 'kube-system')
                if meta(cm).get('name') in scripts and 'start.ps1' in (cm.get('data') or {})]:
            p.append('%s: mounts no addon ConfigMap with start.ps1 (%s)' % (ident(kp), scripts))

    infra_kind = (infra or {}).get('kind')
    if infra_kind in CLOUD_CHART:
        chart(CLOUD_CHART[infra_kind], 'the cloud provider')
    if infra_kind == 'AWSWindowsMachineTemplate':
        for aws in t.find('AWSCluster'):
            rules = ((((aws.get('spec') or {}).get('network') or {}).get('cni') or {}).get('cniIngressRules')) or []
            for proto, port, what in (('udp', VXLAN_PORT, 'VXLAN'), ('tcp', TYPHA_PORT, 'Calico Typha')):
                if flavour.endswith('vxlan') and not any(r.get('protocol') == proto and r.get('fromPort', 0) <= port
                                                         <= r.get('toPort', -1) for r in rules):
                    p.append('%s: cniIngressRules do not open %s %d (%s)' % (ident(aws), proto, port, what))

    every = [o for s in t.streams for o in s.docs]
    # Copies of the Cluster's CIDRs in the addons.
    for o in every:
        ps = pod_spec(o)
        for c in (ps.get('initContainers') or []) + (ps.get('containers') or []):
            for e in c.get('env') or []:
                if e.get('name') == 'SERVICE_CIDR' and [e.get('value')] != services:
                    p.append('%s: SERVICE_CIDR %s != Cluster services %s' % (ident(o), e.get('value'), services))
            for a in (c.get('command') or []) + (c.get('args') or []):
                if isinstance(a, str) and a.startswith('--cluster-cidr=') and [a.split('=', 1)[1]] != pods:
                    p.append('%s: %s != Cluster pods %s' % (ident(o), a, pods))
    # ConfigMaps the addons' pods read must come from the addons or from kubeadm (kube-proxy).
    available = {(meta(o).get('namespace'), meta(o).get('name')) for o in every if o.get('kind') == 'ConfigMap'}
    available.add(('kube-system', 'kube-proxy'))
    for o in every:
        if o.get('kind') not in ('DaemonSet', 'Deployment', 'StatefulSet'):
            continue
        ns = meta(o).get('namespace')
        ps = pod_spec(o)
        wanted = [((v.get('configMap') or {}).get('name'), 'volume') for v in ps.get('volumes') or [] if v.get('configMap')]
        for c in (ps.get('initContainers') or []) + (ps.get('containers') or []):
            wanted += [((e.get('configMapRef') or {}).get('name'), 'envFrom') for e in c.get('envFrom') or []
                       if e.get('configMapRef') and not e['configMapRef'].get('optional')]
        for name, how in wanted:
            if (ns, name) not in available:
                p.append('%s: %s ConfigMap %s/%s is created by no addon and not by kubeadm'
                         % (ident(o), how, ns, name))
    for o in every:
        if o.get('kind') not in ('DaemonSet', 'Deployment', 'StatefulSet'):
            continue
        ps = pod_spec(o)
        if (ps.get('nodeSelector') or {}).get('kubernetes.io/os') == 'windows':
            wo = ((ps.get('securityContext') or {}).get('windowsOptions')) or {}
            if not wo.get('hostProcess') or not ps.get('hostNetwork'):
                p.append('%s: Windows DaemonSet is not HostProcess with hostNetwork' % ident(o))
            tols = ps.get('tolerations') or []
            ok = any(x.get('operator') == 'Exists' and not x.get('key') and not x.get('effect') for x in tols) \
                or any(x.get('key') == 'os' for x in tols)
            if os_taint and not ok:
                p.append('%s: does not tolerate os=windows:NoSchedule (osTaint is on)' % ident(o))
    return p


def crs_strategy(t, stream):
    """The strategy of the ClusterResourceSet applying the top-level ConfigMap of `stream`."""
    cm_name = stream.label.split('[', 1)[0].split('/', 1)[1]
    for crs in t.find('ClusterResourceSet'):
        spec = crs.get('spec') or {}
        if any(r.get('name') == cm_name for r in spec.get('resources') or []):
            return spec.get('strategy', 'ApplyOnce')
    return None


def selector_problems(who, sel, cname, clabels):
    """A ClusterResourceSet's or HelmChartProxy's matchLabels must name this Cluster (addons=<name>)
    and otherwise only labels the Cluster carries: opt-ins with "true", the rest with the Cluster's
    own value (so the addon selects the Cluster as generated)."""
    p = []
    if sel.get(ADDONS_LABEL) != cname:
        p.append('%s: clusterSelector lacks %s=<cluster name>' % (who, ADDONS_LABEL))
    for k, v in sel.items():
        if k == ADDONS_LABEL:
            continue
        if k not in clabels:
            p.append('%s: selects label %s, which the Cluster does not carry' % (who, k))
        elif k in OPT_IN.values():
            if v != 'true':
                p.append('%s: opt-in selector %s=%s (opt-in labels are selected with "true")' % (who, k, v))
        elif clabels.get(k) != v:
            p.append('%s: selects %s=%s, the Cluster has %s=%s' % (who, k, v, k, clabels.get(k)))
    return p


# --------------------------------------------------------------------------------------------
# HelmChartProxies: selection, pinning, valuesTemplate rendering
# --------------------------------------------------------------------------------------------

def cluster_objects(t):
    """(Cluster, ControlPlane, InfraCluster) of the template, as CAAPH looks them up."""
    cluster = (t.find('Cluster') or [{}])[0]
    spec = cluster.get('spec') or {}

    def ref(r):
        r = r or {}
        found = t.find(r.get('kind'), r.get('name'))
        return found[0] if found else {}
    return cluster, ref(spec.get('controlPlaneRef')), ref(spec.get('infrastructureRef'))


def cluster_variant(cluster, endpoint='set', network=None):
    """A copy of the template's Cluster as CAAPH would see it: with the controlPlaneEndpoint CAPZ /
    CAPA set ('set'), without one (None), or with only a host ('host')."""
    c = json.loads(json.dumps(cluster))
    spec = c.setdefault('spec', {})
    spec.pop('controlPlaneEndpoint', None)
    if endpoint == 'set':
        spec['controlPlaneEndpoint'] = dict(PROBE_ENDPOINT)
    elif endpoint == 'host':
        spec['controlPlaneEndpoint'] = {'host': PROBE_ENDPOINT['host']}
    if network:
        spec['clusterNetwork'] = dict(spec.get('clusterNetwork') or {}, **json.loads(json.dumps(network)))
    return c


def render_values(t, hcp, cluster):
    """(values mapping or None, problems) of a HelmChartProxy's valuesTemplate on `cluster`."""
    text = ((hcp.get('spec') or {}).get('valuesTemplate')) or ''
    _, cp, infra = cluster_objects(t)
    try:
        out = gotemplate.render(text, {'Cluster': cluster, 'ControlPlane': cp, 'InfraCluster': infra})
    except gotemplate.GoTemplateError as e:
        return None, ['%s: valuesTemplate: %s' % (ident(hcp), e)]
    if '<no value>' in out:
        line = next(l for l in out.splitlines() if '<no value>' in l)
        return None, ['%s: valuesTemplate renders <no value> (a field the Cluster lacks): %r' % (ident(hcp), line.strip())]
    try:
        docs = load_stream(out)
    except ValueError as e:
        return None, ['%s: rendered valuesTemplate is not YAML: %s' % (ident(hcp), e)]
    if len(docs) > 1 or (docs and not isinstance(docs[0][1], dict)):
        return None, ['%s: rendered valuesTemplate is not one YAML mapping' % ident(hcp)]
    return (docs[0][1] if docs else {}), []


def check_helm(t, workdir):
    p = []
    cluster, problem = the_cluster(t)
    if problem:
        return [problem]
    cname = meta(cluster).get('name')
    clabels = meta(cluster).get('labels') or {}
    for h in t.find('HelmChartProxy'):
        spec = h.get('spec') or {}
        sel = ((spec.get('clusterSelector') or {}).get('matchLabels')) or {}
        if (spec.get('clusterSelector') or {}).get('matchExpressions'):
            p.append('%s: clusterSelector.matchExpressions are not checked here; use matchLabels' % ident(h))
        p.extend(selector_problems(ident(h), sel, cname, clabels))
        for field in ('repoURL', 'chartName', 'version', 'releaseName', 'namespace'):
            if not spec.get(field):
                p.append('%s: spec.%s is not set%s' % (ident(h), field, ' (CAAPH would install and follow the '
                                                        'latest chart)' if field == 'version' else ''))
        if spec.get('repoURL') and not str(spec['repoURL']).startswith(('https://', 'oci://')):
            p.append('%s: repoURL %s is neither https:// nor oci://' % (ident(h), spec['repoURL']))
        for variant in ('set', None):
            values, problems = render_values(t, h, cluster_variant(cluster, variant))
            p.extend(problems)
            if problems:
                break
    return p


def check_calico(t, workdir):
    """The rendered tigera-operator values carry what Windows nodes need (see the docstring)."""
    p = []
    hcps = [h for h in t.find('HelmChartProxy') if (h.get('spec') or {}).get('chartName') == 'tigera-operator']
    if not hcps:
        return ['no HelmChartProxy for the tigera-operator chart']
    cluster, _, _ = cluster_objects(t)
    infra_kind = next((o.get('kind') for o in t.docs if o.get('kind') in CAPWIN_INFRA_KINDS), None)
    for h in hcps:
        spec = h.get('spec') or {}
        if spec.get('repoURL') != 'https://docs.tigera.io/calico/charts' or spec.get('namespace') != 'tigera-operator':
            p.append('%s: want repoURL https://docs.tigera.io/calico/charts, namespace tigera-operator (%s, %s)'
                     % (ident(h), spec.get('repoURL'), spec.get('namespace')))
        for label, variant, network in (('the template\'s Cluster with its controlPlaneEndpoint', 'set', None),
                                        ('a Cluster with other CIDRs', 'set', PROBE_NETWORK)):
            c = cluster_variant(cluster, variant, network)
            values, problems = render_values(t, h, c)
            if problems:
                p.extend(problems)
                continue
            net = (c.get('spec') or {}).get('clusterNetwork') or {}
            pods = (net.get('pods') or {}).get('cidrBlocks') or []
            services = (net.get('services') or {}).get('cidrBlocks') or []
            where = '%s values for %s' % (ident(h), label)
            inst = values.get('installation') or {}
            calico_net = inst.get('calicoNetwork') or {}
            if (inst.get('cni') or {}).get('type') != 'Calico':
                p.append('%s: installation.cni.type is not Calico' % where)
            if calico_net.get('windowsDataplane') != 'HNS':
                p.append('%s: installation.calicoNetwork.windowsDataplane is not HNS' % where)
            if calico_net.get('bgp') != 'Disabled':
                p.append('%s: installation.calicoNetwork.bgp is not Disabled (VXLAN only on Windows)' % where)
            pools = calico_net.get('ipPools') or []
            if sorted(str(x.get('cidr')) for x in pools) != sorted(pods):
                p.append('%s: ipPools %s != Cluster pods %s' % (where, [x.get('cidr') for x in pools], pods))
            if any(x.get('encapsulation') != 'VXLAN' for x in pools):
                p.append('%s: an IP pool is not VXLAN' % where)
            if sorted(inst.get('serviceCIDRs') or []) != sorted(services):
                p.append('%s: serviceCIDRs %s != Cluster services %s' % (where, inst.get('serviceCIDRs'), services))
            want_mtu = CALICO_MTU.get(infra_kind)
            if want_mtu is not None and calico_net.get('mtu') != want_mtu:
                p.append('%s: installation.calicoNetwork.mtu %s, want %d for %s'
                         % (where, calico_net.get('mtu'), want_mtu, infra_kind))
            ep = values.get('kubernetesServiceEndpoint') or {}
            if ep.get('host') != PROBE_ENDPOINT['host'] or str(ep.get('port')) != str(PROBE_ENDPOINT['port']):
                p.append('%s: kubernetesServiceEndpoint %s is not the Cluster\'s controlPlaneEndpoint %s'
                         % (where, ep or None, PROBE_ENDPOINT))
            dns = values.get('dnsConfig') or {}
            if not dns.get('nameservers'):
                p.append('%s: no dnsConfig.nameservers: the host-network operator asks cluster DNS for the '
                         'API server name before CoreDNS can run (projectcalico/calico#9536)' % where)
            felix = values.get('defaultFelixConfiguration') or {}
            if (felix.get('enabled') is not True or felix.get('vxlanVNI') != WINDOWS_VNI
                    or felix.get('vxlanPort') != VXLAN_PORT):
                p.append('%s: defaultFelixConfiguration must be enabled with vxlanVNI %d and vxlanPort %d '
                         '(what Windows needs), got %s' % (where, WINDOWS_VNI, VXLAN_PORT, felix or None))
        # Negative: no endpoint, or a host without a port, renders no kubernetesServiceEndpoint.
        for label, variant in (('a Cluster without controlPlaneEndpoint', None),
                               ('a Cluster whose controlPlaneEndpoint has no port', 'host')):
            values, problems = render_values(t, h, cluster_variant(cluster, variant))
            if problems:
                p.extend('%s (%s)' % (x, label) for x in problems)
            elif 'kubernetesServiceEndpoint' in values:
                p.append('%s values for %s: kubernetesServiceEndpoint %s is rendered (the chart would publish a '
                         'broken kubernetes-services-endpoint)' % (ident(h), label, values['kubernetesServiceEndpoint']))
    return p


# --------------------------------------------------------------------------------------------
# Pod egress to the cloud's metadata endpoints (docs/security.md)
# --------------------------------------------------------------------------------------------

# What a pod on the pod network may and may not reach, per cloud: (address, protocol, port,
# 'deny' or 'allow', why). HostProcess (host-network) pods are not subject to either policy.
METADATA_PROBES = {
    'AzureWindowsMachineTemplate': [
        ('168.63.129.16', 'TCP', 80, 'deny', 'the Azure WireServer\'s HTTP port, CVE-2021-27075'),
        ('168.63.129.16', 'TCP', 32526, 'allow', 'the WireServer\'s port 32526 stays reachable, as in '
                                                   'CAPZ\'s and AKS\'s default rules'),
        ('168.63.129.16', 'UDP', 53, 'allow', 'Azure DNS'),
        ('168.63.129.16', 'TCP', 53, 'allow', 'Azure DNS over TCP'),
        ('169.254.169.254', 'TCP', 80, 'allow', 'the Azure instance metadata service, which '
                                                  'cloud-node-manager-windows reads from the pod network'),
        ('10.96.0.1', 'TCP', 443, 'allow', 'the kubernetes Service'),
        ('20.60.1.1', 'TCP', 443, 'allow', 'an address outside the cluster'),
    ],
    'AWSWindowsMachineTemplate': [
        ('169.254.169.254', 'TCP', 80, 'deny', 'the EC2 instance metadata service: IMDSv1 GETs hand out '
                                                 'the instance role\'s credentials'),
        ('169.254.169.254', 'TCP', 443, 'deny', 'the instance metadata service on any port'),
        ('169.254.169.254', 'UDP', 53, 'deny', 'the instance metadata service on any protocol'),
        ('fd00:ec2::254', 'TCP', 80, 'deny', 'the instance metadata service\'s IPv6 endpoint on Nitro'),
        ('169.254.169.253', 'UDP', 53, 'allow', 'the Amazon DNS server'),
        ('169.254.169.123', 'UDP', 123, 'allow', 'the Amazon Time Sync Service'),
        ('10.96.0.1', 'TCP', 443, 'allow', 'the kubernetes Service'),
        ('52.94.1.1', 'TCP', 443, 'allow', 'an address outside the cluster'),
    ],
}
PROTO_NUMBERS = {'TCP': 6, 'UDP': 17, 'ICMP': 1, 'SCTP': 132, 'UDPLITE': 136, 'ICMPV6': 58}
CALICO_POLICY_API = 'crd.projectcalico.org/v1'
CALICO_FIRST_FIXED_TIER = 1000  # adminnetworkpolicy / kube-admin; the default tier is 1000000
CALICO_WORKLOADS_ONLY = 'has(projectcalico.org/namespace)'
# Rule fields the Windows dataplane cannot render (Felix skips the rule) or this check cannot
# evaluate by address.
CALICO_RULE_UNSUPPORTED = ('notProtocol', 'icmp', 'notICMP', 'http', 'metadata')
CALICO_ENTITY_UNSUPPORTED = ('notNets', 'notPorts', 'notSelector', 'selector', 'namespaceSelector',
                             'serviceAccounts', 'services')


def _ip(addr):
    return ipaddress.ip_address(addr)


def _in_nets(addr, nets):
    ip = _ip(addr)
    for n in nets:
        try:
            net = ipaddress.ip_network(str(n).strip(), strict=False)
        except ValueError:
            continue
        if net.version == ip.version and ip in net:
            return True
    return False


def _port_in(port, ports):
    """Calico ports: ints, "a:b" ranges; HNS ports: "a-b" ranges. Named ports match nothing here."""
    for x in ports:
        s = str(x).strip()
        m = re.fullmatch(r'(\d+)\s*[:-]\s*(\d+)', s)
        if m and int(m.group(1)) <= port <= int(m.group(2)):
            return True
        if s.isdigit() and int(s) == port:
            return True
    return False


def _proto_number(value):
    s = str(value).strip()
    return int(s) if s.isdigit() else PROTO_NUMBERS.get(s.upper())


def calico_rule_problems(rule, where):
    p = []
    if rule.get('action') not in ('Allow', 'Deny', 'Pass'):
        p.append('%s: action %r (Windows renders Allow, Deny and Pass only)' % (where, rule.get('action')))
    for key in CALICO_RULE_UNSUPPORTED:
        if key in rule:
            p.append('%s: %s (the Windows dataplane skips such rules)' % (where, key))
    if rule.get('source'):
        p.append('%s: source %s narrows which pods the rule covers' % (where, rule['source']))
    dst = rule.get('destination') or {}
    for key in CALICO_ENTITY_UNSUPPORTED:
        if key in dst:
            p.append('%s: destination.%s (negative or selector matches are skipped on Windows and cannot be '
                     'checked by address)' % (where, key))
    for port in dst.get('ports') or []:
        if not re.fullmatch(r'\d+(\s*:\s*\d+)?', str(port).strip()):
            p.append('%s: named port %r (not rendered on Windows)' % (where, port))
    return p


def calico_rule_matches(rule, addr, proto, port):
    ip = _ip(addr)
    version = rule.get('ipVersion')
    if version is not None and int(version) != ip.version:
        return False
    if rule.get('protocol') is not None and _proto_number(rule['protocol']) != PROTO_NUMBERS[proto]:
        return False
    dst = rule.get('destination') or {}
    if dst.get('nets') and not _in_nets(addr, dst['nets']):
        return False
    if dst.get('ports') and not _port_in(port, dst['ports']):
        return False
    return True


def calico_verdict(tiers, addr, proto, port):
    """Calico's evaluation over [(tier, [policy])] sorted by order: 'deny', 'allow' (ends policy
    evaluation, NetworkPolicies included), or 'pass' (on to the default tier / profiles)."""
    for tier, policies in tiers:
        decided = None
        for pol in policies:
            for rule in ((pol.get('spec') or {}).get('egress') or []):
                if calico_rule_matches(rule, addr, proto, port):
                    decided = {'Deny': 'deny', 'Allow': 'allow', 'Pass': 'pass'}.get(rule.get('action'), 'pass')
                    break
            if decided:
                break
        if decided is None:
            decided = 'pass' if ((tier or {}).get('spec') or {}).get('defaultAction') == 'Pass' else 'deny'
        if decided != 'pass':
            return decided
    return 'pass'


def hns_acl_settings(entry, delegate_type):
    """The ACL settings of an EndpointPolicy entry, or (None, problem)."""
    value = entry.get('Value') or entry.get('value') or {}
    if str(value.get('Type', '')).upper() != 'ACL':
        return None, None
    if delegate_type in ('sdnoverlay', 'sdnbridge'):
        settings = value.get('Settings')
        if not isinstance(settings, dict):
            return None, ('ACL %s has no Settings object: %s hands each Value to HNS as an HCN endpoint '
                          'policy {Type, Settings}; fields beside Type (the HNS v1 form of azure-vnet and '
                          'win-overlay) are dropped' % (json.dumps(value, sort_keys=True), delegate_type))
        return settings, None
    return value, None


def hns_acl_matches(acl, direction, addr, proto, port):
    if str(acl.get('Direction', '')) != direction:
        return False
    remote = [x for x in str(acl.get('RemoteAddresses', '')).split(',') if x.strip()]
    if remote and not _in_nets(addr, remote):
        return False
    protos = [x for x in str(acl.get('Protocols', '')).split(',') if x.strip()]
    if protos and PROTO_NUMBERS[proto] not in [_proto_number(x) for x in protos]:
        return False
    ports = [x for x in str(acl.get('RemotePorts', '')).split(',') if x.strip()]
    if ports and not _port_in(port, ports):
        return False
    return True


def hns_verdict(acls, direction, addr, proto, port):
    """(verdict, deciding ACL, problem): the matching ACL with the lowest Priority wins; no match
    is a drop once the endpoint has ACLs."""
    matching = [a for a in acls if hns_acl_matches(a, direction, addr, proto, port)]
    if not matching:
        return 'deny', None, None
    best = min(int(a.get('Priority', 0) or 0) for a in matching)
    top = [a for a in matching if int(a.get('Priority', 0) or 0) == best]
    actions = {str(a.get('Action')) for a in top}
    if len(actions) > 1:
        return 'deny', top[0], ('ACLs %s share priority %d with different actions (HNS breaks such ties its '
                                'own way)' % (', '.join(json.dumps(a, sort_keys=True) for a in top), best))
    return ('allow' if actions == {'Allow'} else 'deny'), top[0], None


def check_metadata_egress(t, workdir):
    """Pods cannot reach the cloud's metadata endpoints (METADATA_PROBES), everything else stays
    reachable, and the node and its HostProcess pods are not covered: a tiered Calico
    GlobalNetworkPolicy for the Calico flavours, HNS ACLs in the Windows CNI configuration for
    flannel."""
    p = []
    infra_kind = next((o.get('kind') for o in t.docs if o.get('kind') in CAPWIN_INFRA_KINDS), None)
    probes = METADATA_PROBES.get(infra_kind)
    if probes is None:
        return ['no capwin infrastructure template (%s) to tell the cloud' % ', '.join(sorted(CAPWIN_INFRA_KINDS))]
    wkct = (t.find('WindowsKubeadmConfigTemplate') or [{}])[0]
    flavour = (((((wkct.get('spec') or {}).get('template') or {}).get('spec') or {}).get('windows') or {})
               .get('cni') or {}).get('flavour', 'calico-vxlan')
    base_streams = [s for s in t.streams if any(not any(k in OPT_IN.values() for k in sel) for sel in s.crs_labels)]

    if flavour == 'calico-vxlan':
        docs = [(s, o) for s in base_streams for o in s.docs]
        gnps = [(s, o) for s, o in docs if o.get('kind') == 'GlobalNetworkPolicy'
                and 'Egress' in ((o.get('spec') or {}).get('types') or [])]
        if not gnps:
            return ['no Calico GlobalNetworkPolicy with Egress rules in the addons every cluster gets '
                    '(pods on Windows nodes would reach %s)' % ', '.join(sorted({a for a, _, _, v, _ in probes if v == 'deny'}))]
        tiers = {meta(o).get('name'): o for _, o in docs if o.get('kind') == 'Tier'}
        chain = {}
        for s, pol in gnps:
            spec = pol.get('spec') or {}
            name = meta(pol).get('name')
            where = 'GlobalNetworkPolicy %s' % name
            if pol.get('apiVersion') != CALICO_POLICY_API:
                p.append('%s: apiVersion %s; a ClusterResourceSet can apply only %s before the Calico API '
                         'server runs' % (where, pol.get('apiVersion'), CALICO_POLICY_API))
            strategy = crs_strategy(t, s)
            if strategy != 'Reconcile':
                p.append('%s: its ClusterResourceSet is strategy %s, not Reconcile (a changed policy would never '
                         'reach existing clusters)' % (where, strategy))
            tier_name = spec.get('tier') or 'default'
            if tier_name == 'default':
                p.append('%s: in the default tier: a Deny-only policy there isolates every pod (end-of-tier '
                         'drop), a final Allow overrides the NetworkPolicies, and a final Pass is a Block on '
                         'Windows (projectcalico/calico#13208); it needs a tier of its own' % where)
            else:
                tier = tiers.get(tier_name)
                if tier is None:
                    p.append('%s: tier %s is not created by the addons' % (where, tier_name))
                else:
                    if tier.get('apiVersion') != CALICO_POLICY_API:
                        p.append('Tier %s: apiVersion %s, want %s' % (tier_name, tier.get('apiVersion'), CALICO_POLICY_API))
                    order = (tier.get('spec') or {}).get('order')
                    if not isinstance(order, (int, float)) or order >= CALICO_FIRST_FIXED_TIER:
                        p.append('Tier %s: order %s; it must come before the admin network policy tier (%d) and '
                                 'the default tier' % (tier_name, order, CALICO_FIRST_FIXED_TIER))
                if not str(name).startswith(tier_name + '.'):
                    p.append('%s: a policy in tier %s is named %s.<name>' % (where, tier_name, tier_name))
            if spec.get('types') != ['Egress']:
                p.append('%s: types %s, want [Egress] (an Ingress type without ingress rules drops all traffic '
                         'to the pods)' % (where, spec.get('types')))
            selector = str(spec.get('selector') or '').strip()
            if CALICO_WORKLOADS_ONLY not in selector:
                p.append('%s: selector %r is not limited to pods (%s): host endpoints would be selected and the '
                         'node itself cut off from its metadata service' % (where, selector or 'all()', CALICO_WORKLOADS_ONLY))
            for key in ('namespaceSelector', 'serviceAccountSelector'):
                if spec.get(key):
                    p.append('%s: %s %r leaves the pods it does not select unrestricted' % (where, key, spec[key]))
            for key in ('applyOnForward', 'preDNAT', 'doNotTrack'):
                if spec.get(key):
                    p.append('%s: %s is set (host endpoint options)' % (where, key))
            rules = spec.get('egress') or []
            for i, rule in enumerate(rules):
                p.extend(calico_rule_problems(rule, '%s egress[%d]' % (where, i)))
                if rule.get('action') == 'Allow':
                    p.append('%s egress[%d]: Allow ends policy evaluation and so overrides the pods\' '
                             'NetworkPolicies; let the rest Pass' % (where, i))
            if not rules or rules[-1] != {'action': 'Pass'}:
                p.append('%s: the egress rules do not end with an unconditional Pass (the rest must go on to '
                         'the NetworkPolicies and profiles; a tier\'s own end drops it)' % where)
            chain.setdefault(tier_name, []).append(pol)

        def tier_key(name):
            order = ((tiers.get(name) or {}).get('spec') or {}).get('order')
            return (1000000 if name == 'default' else (order if isinstance(order, (int, float)) else float('inf')), name)

        ordered = []
        for name in sorted(chain, key=tier_key):
            pols = sorted(chain[name], key=lambda o: ((o.get('spec') or {}).get('order', float('inf')), meta(o).get('name')))
            ordered.append((tiers.get(name), pols))
        for addr, proto, port, want, why in probes:
            got = calico_verdict(ordered, addr, proto, port)
            if want == 'deny' and got != 'deny':
                p.append('pod egress to %s %s %d: %s, want Deny (%s)' % (addr, proto, port,
                                                                          'Allow' if got == 'allow' else 'Pass', why))
            if want == 'allow' and got == 'deny':
                p.append('pod egress to %s %s %d: Deny, want Pass (%s)' % (addr, proto, port, why))
    elif flavour.startswith('flannel'):
        confs = []
        for s in base_streams:
            for o in s.docs:
                if o.get('kind') != 'ConfigMap':
                    continue
                for key, value in sorted((o.get('data') or {}).items()):
                    if not key.endswith('.json') or not isinstance(value, str):
                        continue
                    try:
                        conf = json.loads(value)
                    except ValueError:
                        continue
                    if isinstance(conf, dict) and conf.get('type') == 'flannel' and isinstance(conf.get('delegate'), dict):
                        confs.append(('ConfigMap/%s[%s]' % (meta(o).get('name'), key), conf))
        if not confs:
            return ['no Windows flannel CNI configuration (type flannel with a delegate) in the addons']
        for where, conf in confs:
            delegate = conf['delegate']
            dtype = delegate.get('type')
            if dtype in ('sdnoverlay', 'sdnbridge'):
                entries = delegate.get('AdditionalArgs') or []
            elif dtype in ('win-overlay', 'win-bridge'):
                entries = delegate.get('policies') or []
            else:
                p.append('%s: delegate type %r: no rule for its ACL format' % (where, dtype))
                continue
            acls = []
            for e in entries:
                if str(e.get('Name', e.get('name', ''))).lower() != 'endpointpolicy':
                    continue
                acl, problem = hns_acl_settings(e, dtype)
                if problem:
                    p.append('%s: %s' % (where, problem))
                if acl is not None:
                    acls.append(acl)
            if not acls:
                p.append('%s: no ACL endpoint policies (pods on Windows nodes would reach %s)'
                         % (where, ', '.join(sorted({a for a, _, _, v, _ in probes if v == 'deny'}))))
                continue
            for addr, proto, port, want, why in probes:
                got, acl, problem = hns_verdict(acls, 'Out', addr, proto, port)
                if problem:
                    p.append('%s: pod egress to %s %s %d: %s' % (where, addr, proto, port, problem))
                if got != want:
                    p.append('%s: pod egress to %s %s %d: %s, want %s (%s)'
                             % (where, addr, proto, port, 'Block' if got == 'deny' else 'Allow',
                                'Block' if want == 'deny' else 'Allow', why))
                elif want == 'deny' and acl is not None and acl.get('RuleType') != 'Switch':
                    p.append('%s: the ACL blocking %s %s %d has RuleType %r, want Switch (the pod\'s vSwitch port)'
                             % (where, addr, proto, port, acl.get('RuleType')))
            got, _, problem = hns_verdict(acls, 'In', '10.1.0.4', 'TCP', 8080)
            if problem or got != 'allow':
                p.append('%s: inbound traffic to the pods is not allowed by an ACL (once an endpoint has ACLs, '
                         'HNS drops what none allows; Azure/azure-container-networking#2617)%s'
                         % (where, ': ' + problem if problem else ''))
    else:
        p.append('cni flavour %r: no metadata egress rule' % flavour)
    return p


# --------------------------------------------------------------------------------------------
# Forbidden constructs and image pinning
# --------------------------------------------------------------------------------------------

URL_RE = re.compile(r'https?://[^\s\'"`<>)\]]+')


def walk_strings(x, path=()):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from walk_strings(v, path + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from walk_strings(v, path + (i,))
    elif isinstance(x, str):
        yield path, x


def check_forbidden(t, workdir):
    p = []
    objects = [('', o) for o in t.docs] + [(s.label + ' ', o) for s in t.streams for o in s.docs]
    for where, o in objects:
        kind = o.get('kind')
        if kind in ('Job', 'CronJob'):
            p.append('%s%s: a %s (addons are charts or plain manifests; nothing runs once to install them)'
                     % (where, ident(o), kind))
        if kind in ('ClusterRoleBinding', 'RoleBinding') and (o.get('roleRef') or {}).get('name') == 'cluster-admin':
            p.append('%s%s: binds cluster-admin' % (where, ident(o)))
    for where, o in [(w, o) for w, o in objects if w == '']:
        for path, s in walk_strings(o):
            if o.get('kind') == 'HelmChartProxy' and path == ('spec', 'repoURL'):
                continue
            for url in URL_RE.findall(s):
                bare = url.split('?', 1)[0].split('#', 1)[0].rstrip('.,;:')
                if bare.endswith(('.yaml', '.yml', '.json')) or 'raw.githubusercontent.com' in bare:
                    p.append('%s %s: run-time download of manifests: %s' % (ident(o), V.fmt_path(path), bare))
            if re.search(r'kubectl\s+(apply|create|replace)\b[^\n]*\s-f\s*[\'"]?https?://', s):
                p.append('%s %s: kubectl applies manifests from a URL' % (ident(o), V.fmt_path(path)))
    return p


IMAGE_LINE = re.compile(r'^(\s*(?:-\s+)?)(image|imageTag|tag):\s*(\S.*?)\s*$')


def image_problems(value, where):
    p = []
    raw = value.strip().strip('\'"')
    for m in VAR_ANY.finditer(raw):
        ok = VAR_OK.fullmatch(m.group(0))
        if ok and ok.group(2) is None and ok.group(1) not in REQUIRED_PINNING_VARIABLES:
            p.append('%s: %s: ${%s} has no default: the image is pinned to nothing until someone sets it'
                     % (where, raw, ok.group(1)))
    resolved = V.substitute(raw, {}, True, K8S)
    return p, resolved


def check_images(t, workdir):
    """Every image reference pinned: see the docstring. Reads the raw template (variables intact)."""
    p = []
    in_values = False
    for lineno, line in enumerate(t.raw.splitlines(), 1):
        if re.match(r'^\S', line):
            in_values = False
        if re.match(r'^  valuesTemplate:\s*\|', line):
            in_values = True
            continue
        m = IMAGE_LINE.match(line)
        if not m or line.lstrip().startswith('#'):
            continue
        key, value = m.group(2), m.group(3)
        if value.startswith(('{', '|', '>')) or value == '':
            continue  # a mapping (image: {repository, tag}) or a block: its keys are lines of their own
        if key in ('tag', 'imageTag') and not in_values:
            continue
        where = 'line %d %s' % (lineno, key)
        problems, resolved = image_problems(value, where)
        p.extend(problems)
        if key == 'image':
            name_tag = resolved.rsplit('/', 1)[-1]
            if '@sha256:' not in resolved and (':' not in name_tag or name_tag.endswith(':latest')):
                p.append('%s: %s is not pinned to a version (a tag or a digest)' % (where, value))
        elif resolved in ('', 'latest') or '{{' in resolved:
            p.append('%s: %s is not a pinned version' % (where, value))
    # Rendered values: an image given as a repository without a tag is not pinned either.
    cluster, _, _ = cluster_objects(t)
    for h in t.find('HelmChartProxy'):
        spec = h.get('spec') or {}
        version = str(spec.get('version') or '')
        if not version or version == 'latest' or version.startswith('placeholder'):
            p.append('%s: spec.version %r does not pin the chart' % (ident(h), spec.get('version')))
        values, problems = render_values(t, h, cluster_variant(cluster))
        if problems or not values:
            continue
        for path, s in walk_strings(values):
            if path and path[-1] == 'image' and '/' in s:
                name_tag = s.rsplit('/', 1)[-1]
                if '@sha256:' not in s and (':' not in name_tag or name_tag.endswith(':latest')):
                    p.append('%s values %s: %s is not pinned' % (ident(h), V.fmt_path(path), s))
            if path and path[-1] == 'repository':
                parent = values
                for k in path[:-1]:
                    parent = parent[k]
                if not (parent.get('tag') or parent.get('digest')):
                    p.append('%s values %s: image %s has no tag' % (ident(h), V.fmt_path(path), s))
    # Raw-text lines are scanned above; a template without any image reference is suspicious.
    if 'image:' not in t.raw:
        p.append('no image reference found (the scan would pass vacuously)')
    return p


def check_shared(templates):
    """Addon ConfigMap data (top-level and embedded in addons) and HelmChartProxy specs of the same
    name in several templates must be identical (MAY_DIFFER excepted)."""
    seen, problems = {}, []

    def note(key, value, t):
        if key[0] in MAY_DIFFER:
            return
        if key in seen and seen[key][1] != value:
            problems.append('%s differs between %s and %s' % ('/'.join(str(x) for x in key if x), seen[key][0], t.name))
        seen.setdefault(key, (t.name, value))

    for t in templates:
        for cm in t.find('ConfigMap'):
            for key, value in (cm.get('data') or {}).items():
                note(('ConfigMap/%s' % meta(cm).get('name'), '', key), value, t)
        for s in t.streams:
            for o in s.docs:
                if o.get('kind') == 'ConfigMap':
                    for key, value in (o.get('data') or {}).items():
                        note(('ConfigMap/%s' % meta(o).get('name'), meta(o).get('namespace'), key), value, t)
        for h in t.find('HelmChartProxy'):
            note(('HelmChartProxy/%s' % meta(h).get('name'), '', 'spec'), json.dumps(h.get('spec'), sort_keys=True), t)
    return problems


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------

def run_template(t, workdir, pslint_python):
    """[(check name, problems, notes)]."""
    out = [('validate', check_validate(t, workdir), [])]
    problems, skips = check_addons(t, workdir)
    out.append(('addons', problems, skips))
    problems, notes = check_scripts(t, workdir, pslint_python)
    out.append(('scripts', problems, notes))
    out.append(('namespace', check_namespace(t, workdir), []))
    out.append(('variables', check_variables(t, workdir), []))
    out.append(('helm', check_helm(t, workdir), []))
    if any((h.get('spec') or {}).get('chartName') == 'tigera-operator' for h in t.find('HelmChartProxy')) \
            or 'calico' in t.name:
        out.append(('calico', check_calico(t, workdir), []))
    out.append(('forbidden', check_forbidden(t, workdir), []))
    out.append(('images', check_images(t, workdir), []))
    out.append(('structure', check_structure(t, workdir), []))
    out.append(('metadata-egress', check_metadata_egress(t, workdir), []))
    return out


# Negative cases: (name, template, (old, new) or None, check that must fail, text it must report).
FIXTURE = os.path.join(HERE, 'fixtures', 'cluster-template-bad-field.yaml')
# The kind of installer the Calico flavours used to have: a Job bound to cluster-admin that
# downloads manifests at run time (each of the three must be caught on its own).
INSTALLER_JOB = (
    '  calico-ipam.yaml: |\n',
    '  calico-ipam.yaml: |\n'
    '    apiVersion: batch/v1\n'
    '    kind: Job\n'
    '    metadata:\n'
    '      name: calico-installer\n'
    '      namespace: kube-system\n'
    '    spec:\n'
    '      template:\n'
    '        spec:\n'
    '          restartPolicy: OnFailure\n'
    '          containers:\n'
    '          - name: apply\n'
    '            image: registry.k8s.io/kubectl:v1.34.2\n'
    '            command: [kubectl, apply, --server-side, -f, '
    '"https://raw.githubusercontent.com/projectcalico/calico/v3.30.4/manifests/tigera-operator.yaml"]\n'
    '    ---\n'
    '    apiVersion: rbac.authorization.k8s.io/v1\n'
    '    kind: ClusterRoleBinding\n'
    '    metadata:\n'
    '      name: calico-installer\n'
    '    roleRef:\n'
    '      apiGroup: rbac.authorization.k8s.io\n'
    '      kind: ClusterRole\n'
    '      name: cluster-admin\n'
    '    subjects:\n'
    '    - kind: ServiceAccount\n'
    '      name: default\n'
    '      namespace: kube-system\n'
    '    ---\n')
# The WireServer ACL of the flannel CNI configurations, as the templates write it.
FLANNEL_BLOCK_ACL = (
    '              {\n'
    '                "Name": "EndpointPolicy",\n'
    '                "Value": {\n'
    '                  "Type": "ACL",\n'
    '                  "Settings": {\n'
    '                    "Protocols": "6",\n'
    '                    "Action": "Block",\n'
    '                    "Direction": "Out",\n'
    '                    "RemoteAddresses": "168.63.129.16/32",\n'
    '                    "RemotePorts": "80",\n'
    '                    "Priority": 200,\n'
    '                    "RuleType": "Switch"\n'
    '                  }\n'
    '                }\n'
    '              },\n')
FLANNEL_ALLOW_IN_ACL = (
    '              {\n'
    '                "Name": "EndpointPolicy",\n'
    '                "Value": {\n'
    '                  "Type": "ACL",\n'
    '                  "Settings": {\n'
    '                    "Action": "Allow",\n'
    '                    "Direction": "In",\n'
    '                    "Priority": 65500\n'
    '                  }\n'
    '                }\n'
    '              },\n')
FLANNEL_HOST_GW_ARGS = '              "forceBridgeGateway": true\n            },\n            "AdditionalArgs": [\n'
WIRESERVER_DENY = ('      - action: Deny\n        protocol: TCP\n        destination:\n          nets:\n'
                   '          - 168.63.129.16/32\n          ports:\n          - 80\n')
NEGATIVE = [
    ('fixture with a typo in a CR field (osTaints)', FIXTURE, None,
     'validate', 'spec.template.spec.windows.node.osTaints: unknown field "osTaints"'),
    ('typo in a HelmChartProxy field (CAAPH schema)', 'cluster-template-azure-windows-calico.yaml',
     ('  releaseName: projectcalico\n', '  releaseNme: projectcalico\n'),
     'validate', 'unknown field "releaseNme"'),
    ('typo in a field of an embedded DaemonSet', 'cluster-template-azure-windows-calico.yaml',
     ('          serviceAccountName: kube-proxy\n', '          serviceAccountNme: kube-proxy\n'),
     'addons', 'unknown field "serviceAccountNme"'),
    ('wrong type in an embedded RuntimeClass', 'cluster-template-aws-windows-calico.yaml',
     ('      name: windows-2025\n', '      name: windows-2025\n      labels: [x]\n'),
     'addons', 'metadata.labels: invalid type'),
    ('object outside ${NAMESPACE}', 'cluster-template-azure-windows-flannel.yaml',
     ('  name: ${CLUSTER_NAME}-md-win\n  namespace: ${NAMESPACE}\n',
      '  name: ${CLUSTER_NAME}-md-win\n  namespace: default\n'),
     'namespace', "metadata.namespace is 'default'"),
    ('undocumented variable', 'cluster-template-aws-windows-calico.yaml',
     ('  region: ${AWS_REGION}\n', '  region: ${CAPWIN_NOT_DOCUMENTED}\n'),
     'variables', '${CAPWIN_NOT_DOCUMENTED} is not listed'),
    ('one variable, two defaults', 'cluster-template-azure-windows-calico.yaml',
     ('      imageTag: ${CAPWIN_AZURE_CLOUD_PROVIDER_VERSION:=v1.34.2}\n',
      '      imageTag: ${CAPWIN_AZURE_CLOUD_PROVIDER_VERSION:=v1.33.0}\n'),
     'variables', '${CAPWIN_AZURE_CLOUD_PROVIDER_VERSION} has different defaults'),
    ('a per-flavour default not the flavour\'s', 'cluster-template-aws-windows-calico.yaml',
     ('${CAPWIN_WINDOWS_SERVER_VERSION:=2019}', '${CAPWIN_WINDOWS_SERVER_VERSION:=2025}'),
     'variables', "${CAPWIN_WINDOWS_SERVER_VERSION}: default in the template '2025', in templates/README.md '2019'"),
    ('nested default clusterctl cannot take portably', 'cluster-template-azure-windows-calico.yaml',
     ('  resourceGroup: ${CLUSTER_NAME}\n', '  resourceGroup: ${AZURE_RESOURCE_GROUP:=${CLUSTER_NAME}}\n'),
     'variables', 'is not ${NAME} or ${NAME:=default}'),
    ('double backslash clusterctl would halve', 'cluster-template-azure-windows-flannel.yaml',
     ("runAsUserName: 'NT AUTHORITY\\SYSTEM'", "runAsUserName: 'NT AUTHORITY\\\\SYSTEM'"),
     'variables', 'turns two backslashes into one'),
    ('PowerShell syntax error in an embedded script', 'cluster-template-azure-windows-flannel.yaml',
     ("    if ($have -ne $want", "    if ($have -ne $want {"), 'scripts', 'syntax error'),
    ('PowerShell 7 operator in an embedded script', 'cluster-template-azure-windows-calico.yaml',
     ("        exit $LASTEXITCODE\n", "        Test-Path C:/k && exit $LASTEXITCODE\n"),
     'scripts', 'PowerShell 7 only'),
    ('HelmChartProxy selecting a label the Cluster lacks', 'cluster-template-azure-windows-flannel.yaml',
     ('      capwin.cluster.x-k8s.io/cloud-provider: azure\n  repoURL',
      '      capwin.cluster.x-k8s.io/cloud-provider: azure\n      capwin.cluster.x-k8s.io/windows: enabled\n  repoURL'),
     'helm', 'selects label capwin.cluster.x-k8s.io/windows, which the Cluster does not carry'),
    ('HelmChartProxy without a chart version', 'cluster-template-aws-windows-calico.yaml',
     ('  version: ${CAPWIN_AWS_CLOUD_PROVIDER_CHART_VERSION:=0.0.10}\n', ''),
     'images', 'does not pin the chart'),
    ('valuesTemplate using a function the evaluator does not know', 'cluster-template-azure-windows-calico.yaml',
     ('host: {{ .host | quote }}', 'host: {{ .host | squote }}'),
     'helm', "function 'squote' not defined"),
    ('valuesTemplate reading a field the Cluster lacks', 'cluster-template-aws-windows-calico.yaml',
     ('--configure-cloud-routes=false\n', '--configure-cloud-routes=false\n    - --cluster-cidr={{ .Cluster.spec.clusterNetwork.podCIDR }}\n'),
     'helm', 'renders <no value>'),
    ('Calico service CIDRs hard-coded', 'cluster-template-aws-windows-calico.yaml',
     ('      {{- range $cidr := .Cluster.spec.clusterNetwork.services.cidrBlocks }}\n      - {{ $cidr }}\n      {{- end }}\n',
      '      - 10.96.0.0/12\n'),
     'calico', "serviceCIDRs ['10.96.0.0/12'] != Cluster services ['10.128.0.0/16']"),
    ('Calico pools hard-coded', 'cluster-template-azure-windows-calico.yaml',
     ('        - cidr: {{ $cidr }}\n', '        - cidr: 192.168.0.0/16\n'),
     'calico', 'ipPools'),
    ('kubernetesServiceEndpoint rendered without a port', 'cluster-template-azure-windows-calico.yaml',
     ('    {{- if and .host .port }}\n', '    {{- if .host }}\n'),
     'calico', 'Cluster whose controlPlaneEndpoint has no port: kubernetesServiceEndpoint'),
    ('kubernetesServiceEndpoint rendered without an endpoint', 'cluster-template-aws-windows-calico.yaml',
     ('    {{- with .Cluster.spec.controlPlaneEndpoint }}\n    {{- if and .host .port }}\n    kubernetesServiceEndpoint:\n      host: {{ .host | quote }}\n      port: {{ .port | quote }}\n    {{- end }}\n    {{- end }}\n',
      '    kubernetesServiceEndpoint:\n      host: "api.example.com"\n      port: "6443"\n'),
     'calico', 'a Cluster without controlPlaneEndpoint: kubernetesServiceEndpoint'),
    ('no dnsConfig for the host-network operator', 'cluster-template-azure-windows-calico.yaml',
     ('    dnsConfig:\n', '    dnsConfigs:\n'),
     'calico', 'no dnsConfig.nameservers'),
    ('Felix VNI Windows cannot use', 'cluster-template-aws-windows-calico.yaml',
     ('      vxlanVNI: 4096\n', '      vxlanVNI: 1\n'),
     'calico', 'vxlanVNI 4096'),
    ('Calico MTU not the cloud\'s', 'cluster-template-azure-windows-calico.yaml',
     ('        mtu: 1350\n', '        mtu: 1450\n'),
     'calico', 'mtu 1450, want 1350'),
    ('installer Job with a cluster-admin binding and a manifest download', 'cluster-template-aws-windows-calico.yaml',
     INSTALLER_JOB, 'forbidden', 'Job/calico-installer: a Job'),
    ('cluster-admin binding in an addon', 'cluster-template-aws-windows-calico.yaml',
     INSTALLER_JOB, 'forbidden', 'ClusterRoleBinding/calico-installer: binds cluster-admin'),
    ('run-time manifest download', 'cluster-template-aws-windows-calico.yaml',
     INSTALLER_JOB, 'forbidden', 'run-time download of manifests: https://raw.githubusercontent.com/projectcalico/calico'),
    ('image on latest', 'cluster-template-azure-windows-flannel.yaml',
     ('csi-proxy:v1.1.3', 'csi-proxy:latest'), 'images', 'is not pinned to a version'),
    ('image tag variable without a default', 'cluster-template-azure-windows-flannel.yaml',
     ('image: ghcr.io/flannel-io/flannel:${CAPWIN_FLANNEL_VERSION:=v0.27.4}\n            command: [/opt/bin/flanneld]',
      'image: ghcr.io/flannel-io/flannel:${CAPWIN_FLANNEL_IMAGE_TAG}\n            command: [/opt/bin/flanneld]'),
     'images', '${CAPWIN_FLANNEL_IMAGE_TAG} has no default'),
    ('chart image tag variable without a default', 'cluster-template-azure-windows-calico.yaml',
     ('    cloudNodeManager:\n      imageTag: ${CAPWIN_AZURE_CLOUD_PROVIDER_VERSION:=v1.34.2}\n',
      '    cloudNodeManager:\n      imageTag: ${CAPWIN_AZURE_CCM_TAG}\n'),
     'images', '${CAPWIN_AZURE_CCM_TAG} has no default'),
    ('VNI back in the WindowsKubeadmConfigTemplate', 'cluster-template-azure-windows-flannel.yaml',
     ('          flavour: flannel-vxlan\n', '          flavour: flannel-vxlan\n          vxlan:\n            vni: 4096\n'),
     'structure', 'windows.cni.vxlan is set'),
    ('ClusterResourceSet naming a missing ConfigMap', 'cluster-template-aws-windows-calico.yaml',
     ('    name: ${CLUSTER_NAME}-kube-proxy-windows\n---', '    name: ${CLUSTER_NAME}-kube-proxy-windowz\n---'),
     'structure', 'resource ConfigMap/placeholder-kube-proxy-windowz is not in the template'),
    ('strict affinity applied once only', 'cluster-template-azure-windows-calico.yaml',
     ('  strategy: Reconcile\n', '  strategy: ApplyOnce\n'),
     'structure', 'not strategy Reconcile'),
    ('flannel VNI Windows cannot use', 'cluster-template-azure-windows-flannel.yaml',
     ('"VNI": 4096', '"VNI": 1'), 'structure', 'does not state VNI 4096 and port 4789'),
    ('Windows agents reading a ConfigMap nobody creates', 'cluster-template-azure-windows-flannel.yaml',
     ('          - name: kube-proxy\n            configMap:\n              name: kube-proxy\n',
      '          - name: kube-proxy\n            configMap:\n              name: kube-proxyz\n'),
     'structure', 'volume ConfigMap kube-system/kube-proxyz is created by no addon and not by kubeadm'),
    ('kube-proxy running the image\'s start.ps1', 'cluster-template-aws-windows-calico.yaml',
     ("'capwin/start.ps1')\"]\n            env:\n            - name: NODE_NAME\n              valueFrom:\n                fieldRef:\n                  fieldPath: spec.nodeName\n            # Calico",
      "'kube-proxy/start.ps1')\"]\n            env:\n            - name: NODE_NAME\n              valueFrom:\n                fieldRef:\n                  fieldPath: spec.nodeName\n            # Calico"),
     'structure', 'not capwin/start.ps1'),
    ('kube-proxy naming the wrong HNS network', 'cluster-template-azure-windows-flannel.yaml',
     ('              value: flannel.4096\n', '              value: Calico\n'),
     'structure', "KUBE_NETWORK 'Calico', but cni flannel-vxlan creates"),
    ('Hyper-V RuntimeClass scheduling onto nodes without the handler', 'cluster-template-azure-windows-calico.yaml',
     ('        capwin.cluster.x-k8s.io/hyperv-isolation: "true"\n', ''),
     'structure', 'scheduling.nodeSelector'),
    ('AWS security group without Typha', 'cluster-template-aws-windows-calico.yaml',
     ('        fromPort: 5473\n        toPort: 5473\n', '        fromPort: 5474\n        toPort: 5474\n'),
     'structure', 'do not open tcp 5473'),
    ('service CIDR copy out of step with the Cluster', 'cluster-template-azure-windows-flannel.yaml',
     ('              value: 10.96.0.0/12\n', '              value: 10.0.0.0/16\n'),
     'structure', 'SERVICE_CIDR 10.0.0.0/16 != Cluster services'),
    ('WireServer deny rule removed', 'cluster-template-azure-windows-calico.yaml',
     (WIRESERVER_DENY, ''),
     'metadata-egress', 'pod egress to 168.63.129.16 TCP 80: Pass, want Deny'),
    ('WireServer deny widened to every port', 'cluster-template-azure-windows-calico.yaml',
     (WIRESERVER_DENY, WIRESERVER_DENY.replace('          ports:\n          - 80\n', '')),
     'metadata-egress', 'pod egress to 168.63.129.16 TCP 32526: Deny, want Pass'),
    ('metadata policy ending in Allow', 'cluster-template-azure-windows-calico.yaml',
     ('      - action: Pass\n', '      - action: Allow\n'),
     'metadata-egress', 'Allow ends policy evaluation'),
    ('metadata policy through the Calico API server', 'cluster-template-azure-windows-calico.yaml',
     ('    apiVersion: crd.projectcalico.org/v1\n    kind: GlobalNetworkPolicy\n',
      '    apiVersion: projectcalico.org/v3\n    kind: GlobalNetworkPolicy\n'),
     'metadata-egress', 'before the Calico API server runs'),
    ('metadata policy applied once only', 'cluster-template-azure-windows-calico.yaml',
     ('  name: ${CLUSTER_NAME}-metadata-egress\n  namespace: ${NAMESPACE}\nspec:\n  strategy: Reconcile\n',
      '  name: ${CLUSTER_NAME}-metadata-egress\n  namespace: ${NAMESPACE}\nspec:\n  strategy: ApplyOnce\n'),
     'metadata-egress', 'is strategy ApplyOnce, not Reconcile'),
    ('metadata policy in the default tier', 'cluster-template-aws-windows-calico.yaml',
     ('      tier: capwin-metadata\n', ''),
     'metadata-egress', 'in the default tier'),
    ('IMDS address mistyped', 'cluster-template-aws-windows-calico.yaml',
     ('          - 169.254.169.254/32\n', '          - 169.254.169.253/32\n'),
     'metadata-egress', 'pod egress to 169.254.169.254 TCP 80: Pass, want Deny'),
    ('IMDS deny narrowed to port 80', 'cluster-template-aws-windows-calico.yaml',
     ('          - 169.254.169.254/32\n', '          - 169.254.169.254/32\n          ports:\n          - 80\n'),
     'metadata-egress', 'pod egress to 169.254.169.254 TCP 443: Pass, want Deny'),
    ('metadata policy also typed Ingress', 'cluster-template-aws-windows-calico.yaml',
     ('      types:\n      - Egress\n', '      types:\n      - Ingress\n      - Egress\n'),
     'metadata-egress', "types ['Ingress', 'Egress'], want [Egress]"),
    ('metadata policy selecting host endpoints', 'cluster-template-aws-windows-calico.yaml',
     ('      selector: has(projectcalico.org/namespace)\n', '      selector: all()\n'),
     'metadata-egress', 'is not limited to pods'),
    ('metadata policy behind an opt-in label', 'cluster-template-aws-windows-calico.yaml',
     ('      capwin.cluster.x-k8s.io/addons: ${CLUSTER_NAME}\n  resources:\n  - kind: ConfigMap\n'
      '    name: ${CLUSTER_NAME}-metadata-egress-aws\n',
      '      capwin.cluster.x-k8s.io/addons: ${CLUSTER_NAME}\n      capwin.cluster.x-k8s.io/csi-proxy: "true"\n'
      '  resources:\n  - kind: ConfigMap\n    name: ${CLUSTER_NAME}-metadata-egress-aws\n'),
     'metadata-egress', 'no Calico GlobalNetworkPolicy with Egress rules in the addons every cluster gets'),
    ('flannel WireServer ACL removed (VXLAN)', 'cluster-template-azure-windows-flannel.yaml',
     (FLANNEL_BLOCK_ACL, ''),
     'metadata-egress', '[cni-conf-vxlan.json]: pod egress to 168.63.129.16 TCP 80: Allow, want Block'),
    ('flannel WireServer ACL removed (host-gw)', 'cluster-template-azure-windows-flannel.yaml',
     (FLANNEL_HOST_GW_ARGS + FLANNEL_BLOCK_ACL, FLANNEL_HOST_GW_ARGS),
     'metadata-egress', '[cni-conf-host-gw.json]: pod egress to 168.63.129.16 TCP 80: Allow, want Block'),
    ('flannel ACL in the HNS v1 form sdnoverlay drops', 'cluster-template-azure-windows-flannel.yaml',
     (FLANNEL_BLOCK_ACL, FLANNEL_BLOCK_ACL.replace('"Settings": {', '"Setting": {')),
     'metadata-egress', 'has no Settings object'),
    ('flannel ACLs without the inbound allow', 'cluster-template-azure-windows-flannel.yaml',
     (FLANNEL_ALLOW_IN_ACL, ''),
     'metadata-egress', 'inbound traffic to the pods is not allowed'),
    ('flannel block ACL tied with the allow', 'cluster-template-azure-windows-flannel.yaml',
     (FLANNEL_BLOCK_ACL, FLANNEL_BLOCK_ACL.replace('"Priority": 200', '"Priority": 65500')),
     'metadata-egress', 'share priority 65500 with different actions'),
    ('flannel block ACL on the host firewall', 'cluster-template-azure-windows-flannel.yaml',
     (FLANNEL_BLOCK_ACL, FLANNEL_BLOCK_ACL.replace('"RuleType": "Switch"', '"RuleType": "Host"')),
     'metadata-egress', "has RuleType 'Host', want Switch"),
]


def negative_cases(templates_dir, workdir, pslint_python, report):
    for name, source, mutation, check, expected in NEGATIVE:
        path = source if os.path.isabs(source) else os.path.join(templates_dir, source)
        label = 'negative: %s' % name
        if check == 'scripts' and expected == 'syntax error' and not pslint_python:
            print('skip %s: needs the PowerShell grammar (CAPWIN_SKIP_PSLINT=1)' % label)
            continue
        if not os.path.exists(path):
            report(label, ['%s does not exist' % path], [])
            continue
        if mutation:
            with open(path, encoding='utf-8') as f:
                text = f.read()
            if mutation[0] not in text:
                report(label, ['the mutation target %r is not in %s any more' % (mutation[0], source)], [])
                continue
            path = os.path.join(workdir, 'mutated-' + os.path.basename(source))
            with open(path, 'w', encoding='utf-8') as f:
                f.write(text.replace(mutation[0], mutation[1], 1))
        results = dict((c, pr) for c, pr, _ in run_template(Template(path), workdir, pslint_python))
        got = results.get(check, [])
        if any(expected in line for line in got):
            report(label, [], ['caught by %s: %s' % (check, next(l for l in got if expected in l))])
        else:
            report(label, ['the %s check did not report %r; it reported: %s'
                           % (check, expected, got or 'nothing')], [])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--pslint-python', default='', help='python with tree-sitter-powershell (setup-pslint.sh)')
    ap.add_argument('--no-fixtures', action='store_true', help='skip the negative cases')
    ap.add_argument('templates', nargs='*')
    args = ap.parse_args(argv)
    templates_dir = os.path.join(REPO, 'templates')
    paths = args.templates or sorted(glob.glob(os.path.join(templates_dir, 'cluster-template-*.yaml')))
    counts = {'passed': 0, 'failed': 0, 'skipped': 0}

    def report(name, problems, notes, verbose=True):
        if problems:
            counts['failed'] += 1
            print('FAIL %s' % name)
            for line in problems:
                print('       %s' % line)
        else:
            counts['passed'] += 1
            print('ok   %s' % name)
        if verbose:
            for line in notes:
                print('       %s' % line)

    if not paths:
        report('templates exist', ['no templates/cluster-template-*.yaml'], [])
    report('gotemplate.py evaluator: its own %d cases (unsupported functions and actions are errors)'
           % len(gotemplate.SELF_TEST), gotemplate.self_test(), [])
    with tempfile.TemporaryDirectory(prefix='capwin-templates-') as workdir:
        loaded = []
        for path in paths:
            t = Template(path)
            loaded.append(t)
            for check, problems, notes in run_template(t, workdir, args.pslint_python):
                if check == 'addons':
                    counts['skipped'] += len(notes)
                    report('%s %s (%d streams)' % (t.name, check, len(t.streams)), problems, notes)
                elif check == 'scripts':
                    report('%s %s (%d scripts)' % (t.name, check, len(t.scripts)), problems, notes)
                else:
                    report('%s %s' % (t.name, check), problems, notes)
        if len(loaded) > 1:
            report('shared addons identical across %d templates' % len(loaded), check_shared(loaded), [])
        if not args.no_fixtures:
            negative_cases(templates_dir, workdir, args.pslint_python, report)
    print('skipped: %d embedded documents with no schema here (listed above)' % counts['skipped'])
    print('templates checks: %d passed, %d failed' % (counts['passed'], counts['failed']))
    return 1 if counts['failed'] else 0


if __name__ == '__main__':
    sys.exit(main())
