"""Checks capwin's clusterctl templates (templates/cluster-template-*.yaml). Run by check.sh.

    check.py [--pslint-python PY] [--no-fixtures] [TEMPLATE...]

For every template:

  validate     test/manifests/validate.py --default-vars on the template (CRs against the real
               CRDs, built-in kinds with kubernetes-validate, unknown fields are errors)
  addons       every manifest stream embedded in a ConfigMap's data (and, recursively, in the
               ConfigMaps those manifests create) validated the same way; documents whose kind has
               no schema here (tigera-operator's Installation, Calico's crd.projectcalico.org
               kinds) are listed as "skipped: no schema"
  scripts      PowerShell (.ps1 keys) parsed with the tree-sitter grammar plus a Windows
               PowerShell 5.1 check (pslint.py), shell scripts with `sh -n`, JSON keys parsed
  namespace    every object sits in ${NAMESPACE} (or is cluster-scoped)
  variables    every ${...} is ${NAME} or ${NAME:=default} with an UPPER_SNAKE name, documented in
               templates/README.md with the same default, one default per name, and none of the
               sequences drone/envsubst (clusterctl's substitution) rewrites: $$, a backslash
               before a backslash or a slash
  structure    one Cluster whose refs resolve; one MachineDeployment with a WindowsKubeadmConfig-
               Template and a capwin infrastructure template; one MachineHealthCheck selecting its
               Machines; ClusterResourceSets selecting the Cluster, their ConfigMaps present; the
               addons the flavour needs (CNI matching the CNI flavour and the Cluster's CIDRs,
               kube-proxy-windows naming the CNI's HNS network, cloud provider, RuntimeClasses,
               opt-in csi-proxy and Hyper-V); copies of the Cluster's CIDRs agree; every ConfigMap
               an addon pod reads (or the Calico installer waits for) is created by an addon,
               by kubeadm or by the control plane's capwin-publish-endpoint.sh; Windows DaemonSets
               are HostProcess and tolerate the os taint; images are pinned

Then: addon ConfigMaps shared by several templates must be identical, and negative cases (a
fixture with a typo in a field, and mutations of the real templates) must each be caught by the
check that is meant to catch them. Ends with `templates checks: N passed, M failed`.
"""
import argparse
import glob
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

K8S = '1.34'
NS_SENTINEL = 'capwin-ns-sentinel'

CAPWIN_INFRA_KINDS = {'AzureWindowsMachineTemplate', 'AWSWindowsMachineTemplate'}
OPT_IN = {'csi-proxy': 'capwin.cluster.x-k8s.io/csi-proxy', 'hyperv': 'capwin.cluster.x-k8s.io/hyperv'}
ADDONS_LABEL = 'capwin.cluster.x-k8s.io/addons'
# Built-in kinds that are cluster-scoped (the CRD kinds' scope comes from their CRDs).
CLUSTER_SCOPED_BUILTINS = {'Namespace', 'ClusterRole', 'ClusterRoleBinding', 'RuntimeClass',
                           'CustomResourceDefinition', 'PriorityClass', 'StorageClass',
                           'CSIDriver', 'PersistentVolume', 'Node', 'IngressClass',
                           'ValidatingWebhookConfiguration', 'MutatingWebhookConfiguration'}
# ConfigMap data keys that legitimately differ between templates of the same name.
MAY_DIFFER = {'calico.yaml'}  # Azure sets the VXLAN MTU and the checksum-offload workaround

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
    """{NAME: default or None} from the variables tables of templates/README.md."""
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
        if cell.lower().startswith(('required', 'set by clusterctl')):
            out[m.group(1)] = None
        else:
            d = re.match(r'^`([^`]*)`', cell)
            out[m.group(1)] = d.group(1) if d else '<unparsed: %s>' % cell
    return out


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
        elif name in documented and documented[name] != next(iter(ds)):
            problems.append('${%s}: default in the template %r, in templates/README.md %r'
                            % (name, next(iter(ds)), documented[name]))
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


def check_structure(t, workdir):
    p = []
    clusters = t.find('Cluster')
    if len(clusters) != 1:
        return ['%d Cluster objects, want exactly 1' % len(clusters)]
    cluster = clusters[0]
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
        if sel.get(ADDONS_LABEL) != cname:
            p.append('%s: clusterSelector lacks %s=<cluster name>' % (ident(crs), ADDONS_LABEL))
        for k in sel:
            if k not in clabels:
                p.append('%s: selects label %s, which the Cluster does not carry' % (ident(crs), k))
        extra = {k: v for k, v in sel.items() if k != ADDONS_LABEL}
        if not extra and not labels_match(sel, clabels):
            p.append('%s: does not select the Cluster (%s vs %s)' % (ident(crs), sel, clabels))
        for k, v in extra.items():
            if k not in OPT_IN.values() or v != 'true':
                p.append('%s: unexpected selector %s=%s (opt-in labels are %s, value "true")'
                         % (ident(crs), k, v, ', '.join(sorted(OPT_IN.values()))))
        for r in spec.get('resources') or []:
            referenced.add((r.get('kind'), r.get('name')))
            if not t.find(r.get('kind'), r.get('name')):
                p.append('%s: resource %s/%s is not in the template' % (ident(crs), r.get('kind'), r.get('name')))
    for cm in t.find('ConfigMap'):
        if ('ConfigMap', meta(cm).get('name')) not in referenced:
            p.append('%s is applied by no ClusterResourceSet' % ident(cm))

    base = all_addon_objects(t, lambda sel: set(sel) == {ADDONS_LABEL})

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

    need(base, 'DaemonSet', 'kube-proxy-windows', 'kube-system', 'kube-proxy for Windows')
    if not [o for o in has(base, 'RuntimeClass') if o.get('handler') == 'runhcs-wcow-process']:
        p.append('addons: no RuntimeClass with handler runhcs-wcow-process')
    if not [o for o in has(optin('hyperv'), 'RuntimeClass') if o.get('handler') == 'runhcs-wcow-hypervisor']:
        p.append('addons: no opt-in (%s) RuntimeClass with handler runhcs-wcow-hypervisor' % OPT_IN['hyperv'])
    need(optin('csi-proxy'), 'DaemonSet', 'csi-proxy', 'kube-system', 'opt-in %s' % OPT_IN['csi-proxy'])

    wspec = (((wkct or {}).get('spec') or {}).get('template') or {}).get('spec') or {}
    windows = wspec.get('windows') or {}
    flavour = (windows.get('cni') or {}).get('flavour', 'calico-vxlan')
    vni = ((windows.get('cni') or {}).get('vxlan') or {}).get('vni', 4096)
    os_taint = (windows.get('node') or {}).get('osTaint', False)
    if flavour == 'calico-vxlan':
        need(base, 'Job', 'capwin-calico-installer', 'kube-system', 'installs tigera-operator')
        inst = need(base, 'Installation', 'default', None, 'Calico Installation')
        if inst:
            ispec = inst.get('spec') or {}
            net = ispec.get('calicoNetwork') or {}
            if net.get('windowsDataplane') != 'HNS':
                p.append('Installation: calicoNetwork.windowsDataplane is not HNS')
            if net.get('bgp') != 'Disabled':
                p.append('Installation: calicoNetwork.bgp is not Disabled (VXLAN only on Windows)')
            pools = net.get('ipPools') or []
            if sorted(x.get('cidr') for x in pools) != sorted(pods):
                p.append('Installation: ipPools %s != Cluster pods %s' % ([x.get('cidr') for x in pools], pods))
            if any(x.get('encapsulation') != 'VXLAN' for x in pools):
                p.append('Installation: an IP pool is not VXLAN')
            if sorted(ispec.get('serviceCIDRs') or []) != sorted(services):
                p.append('Installation: serviceCIDRs %s != Cluster services %s' % (ispec.get('serviceCIDRs'), services))
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
            if flavour == 'flannel-vxlan' and (backend.get('Type') != 'vxlan' or backend.get('VNI') != vni
                                               or backend.get('Port') != 4789):
                p.append('flannel Backend %s does not match cni flannel-vxlan VNI %s port 4789' % (backend, vni))
            if flavour == 'flannel-host-gw' and backend.get('Type') != 'host-gw':
                p.append('flannel Backend %s is not host-gw' % backend)
    else:
        p.append('WindowsKubeadmConfigTemplate cni flavour %r: no addon rule' % flavour)

    # kube-proxy must name the HNS network the CNI creates.
    want_network = {'calico-vxlan': ['Calico'], 'flannel-vxlan': ['flannel.%s' % vni, ''],
                    'flannel-host-gw': ['cbr0', '']}.get(flavour, [])
    for kp in has(base, 'DaemonSet', 'kube-proxy-windows', 'kube-system'):
        for c in pod_spec(kp).get('containers') or []:
            for e in c.get('env') or []:
                if e.get('name') == 'KUBE_NETWORK' and e.get('value', '') not in want_network:
                    p.append('%s: KUBE_NETWORK %r, but cni %s creates %s'
                             % (ident(kp), e.get('value'), flavour, ' or '.join(repr(x) for x in want_network)))

    infra_kind = (infra or {}).get('kind')
    if infra_kind == 'AzureWindowsMachineTemplate':
        need(base, 'Deployment', 'cloud-controller-manager', 'kube-system', 'Azure cloud-controller-manager')
        need(base, 'DaemonSet', 'cloud-node-manager', 'kube-system', 'Azure cloud-node-manager for Linux')
        need(base, 'DaemonSet', 'cloud-node-manager-windows', 'kube-system', 'Azure cloud-node-manager for Windows')
    elif infra_kind == 'AWSWindowsMachineTemplate':
        need(base, 'DaemonSet', 'aws-cloud-controller-manager', 'kube-system', 'AWS cloud-controller-manager')

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
    # ConfigMaps the addons' pods read must come from the addons, from kubeadm (kube-proxy), or
    # from the control plane's capwin-publish-endpoint.sh arguments.
    available = {(meta(o).get('namespace'), meta(o).get('name')) for o in every if o.get('kind') == 'ConfigMap'}
    available.add(('kube-system', 'kube-proxy'))
    if kcp is not None:
        for cmd in (((kcp.get('spec') or {}).get('kubeadmConfigSpec') or {}).get('postKubeadmCommands') or []):
            if 'capwin-publish-endpoint.sh' in cmd:
                for arg in cmd.split()[1:]:
                    available.add(tuple(arg.split('/', 1)))
    for o in every:
        if o.get('kind') not in ('DaemonSet', 'Deployment', 'Job'):
            continue
        ns = meta(o).get('namespace')
        ps = pod_spec(o)
        wanted = [((v.get('configMap') or {}).get('name'), 'volume') for v in ps.get('volumes') or [] if v.get('configMap')]
        for c in (ps.get('initContainers') or []) + (ps.get('containers') or []):
            wanted += [((e.get('configMapRef') or {}).get('name'), 'envFrom') for e in c.get('envFrom') or []
                       if e.get('configMapRef') and not e['configMapRef'].get('optional')]
            cmd = c.get('command') or []
            if cmd[:2] == ['kubectl', 'wait'] and '--for=create' in cmd:
                wns = next((x.split('=', 1)[1] for x in cmd if x.startswith('--namespace=')), ns)
                for x in cmd:
                    if x.startswith('configmap/') and (wns, x.split('/', 1)[1]) not in available:
                        p.append('%s waits for ConfigMap %s/%s, which nothing creates' % (ident(o), wns, x.split('/', 1)[1]))
        for name, how in wanted:
            if (ns, name) not in available:
                p.append('%s: %s ConfigMap %s/%s is created by no addon, kubeadm or the control plane'
                         % (ident(o), how, ns, name))
    for o in every:
        if o.get('kind') not in ('DaemonSet', 'Deployment', 'Job'):
            continue
        ps = pod_spec(o)
        for c in (ps.get('initContainers') or []) + (ps.get('containers') or []):
            image = str(c.get('image', ''))
            name_tag = image.rsplit('/', 1)[-1]
            if '@sha256:' not in image and (':' not in name_tag or name_tag.endswith(':latest')):
                p.append('%s container %s: image %r is not pinned to a version' % (ident(o), c.get('name'), image))
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


def check_shared(templates):
    """Addon ConfigMap data shared by several templates must be identical."""
    seen, problems = {}, []
    for t in templates:
        for cm in t.find('ConfigMap'):
            for key, value in (cm.get('data') or {}).items():
                if key in MAY_DIFFER:
                    continue
                k = (meta(cm).get('name'), key)
                if k in seen and seen[k][1] != value:
                    problems.append('ConfigMap/%s[%s] differs between %s and %s'
                                    % (k[0], key, seen[k][0], t.name))
                seen.setdefault(k, (t.name, value))
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
    out.append(('structure', check_structure(t, workdir), []))
    return out


# Negative cases: (name, template, (old, new) or None, check that must fail, text it must report).
FIXTURE = os.path.join(HERE, 'fixtures', 'cluster-template-bad-field.yaml')
NEGATIVE = [
    ('fixture with a typo in a CR field (osTaints)', FIXTURE, None,
     'validate', 'spec.template.spec.windows.node.osTaints: unknown field "osTaints"'),
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
     ('calico/${CAPWIN_CALICO_VERSION:=v3.30.4}/manifests/operator-crds',
      'calico/${CAPWIN_CALICO_VERSION:=v3.29.0}/manifests/operator-crds'),
     'variables', '${CAPWIN_CALICO_VERSION} has different defaults'),
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
    ('ClusterResourceSet naming a missing ConfigMap', 'cluster-template-aws-windows-calico.yaml',
     ('    name: ${CLUSTER_NAME}-kube-proxy-windows\n---', '    name: ${CLUSTER_NAME}-kube-proxy-windowz\n---'),
     'structure', 'resource ConfigMap/placeholder-kube-proxy-windowz is not in the template'),
    ('Calico pool not matching the Cluster pod CIDR', 'cluster-template-aws-windows-calico.yaml',
     ('          cidr: 192.168.0.0/16\n', '          cidr: 10.244.0.0/16\n'),
     'structure', 'ipPools'),
    ('flannel VNI not matching the Windows CNI settings', 'cluster-template-azure-windows-flannel.yaml',
     ('"VNI": 4096', '"VNI": 1'), 'structure', 'does not match cni flannel-vxlan VNI'),
    ('Windows agents reading an endpoint ConfigMap nobody publishes', 'cluster-template-azure-windows-flannel.yaml',
     ('capwin-publish-endpoint.sh kube-system/capwin-apiserver-endpoint\n',
      'capwin-publish-endpoint.sh kube-system/capwin-endpoint\n'),
     'structure', 'envFrom ConfigMap kube-system/capwin-apiserver-endpoint is created by no addon'),
    ('Calico installer waiting for an endpoint nobody publishes', 'cluster-template-aws-windows-calico.yaml',
     ('capwin-publish-endpoint.sh tigera-operator/kubernetes-services-endpoint ', 'capwin-publish-endpoint.sh '),
     'structure', 'waits for ConfigMap tigera-operator/kubernetes-services-endpoint, which nothing creates'),
    ('kube-proxy naming the wrong HNS network', 'cluster-template-azure-windows-flannel.yaml',
     ('              value: flannel.4096\n', '              value: Calico\n'),
     'structure', "KUBE_NETWORK 'Calico', but cni flannel-vxlan creates"),
    ('service CIDR copy out of step with the Cluster', 'cluster-template-azure-windows-flannel.yaml',
     ('              value: 10.96.0.0/12\n', '              value: 10.0.0.0/16\n'),
     'structure', 'SERVICE_CIDR 10.0.0.0/16 != Cluster services'),
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
