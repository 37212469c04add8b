#!/usr/bin/env python3
"""Checks capwin's clusterctl packaging: config/ (two providers), tilt-provider.yaml, Dockerfile,
and the output of `capwin release`.

Usage (run with the manifests venv python; test/config/check.sh and test/release/check.sh do):

    check.py                 self-test, then the real checks
    check.py --self-test     fixtures only (test/config/fixtures/, release layouts included)
    check.py --no-self-test  the real checks only
    check.py --render DIR    print the rendered kustomize root (what the checks see)
    check.py --release DIR --version vX.Y.Z
                             check a `capwin release --version vX.Y.Z --out DIR` layout

The default run ends with `config checks: N passed, M failed`, --release with
`release checks: N passed, M failed`; exit 1 on any failure, 2 on a usage error or when kubectl is
missing (both modes render config/ with it).

Default run: renders config/bootstrap, config/infrastructure and config/crd with plain
`kubectl kustomize ROOT` (no flags, so kustomize's default load restrictor applies, as for every
CAPI provider's config/default), then checks each provider's components stream against the
clusterctl rules (one Namespace, everything in it, provider label, CRD names and contract labels,
one Deployment with a container named `manager`, probes, resources, the restricted security
context, no RBAC wildcards, permissions exactly as documented, `${CAPWIN_...}` variables only, all
documented in config/README.md), validates the output against real schemas with
test/manifests/validate.py, and checks tilt-provider.yaml, the Dockerfile and .dockerignore
statically. A self-test runs the same checks on test/config/fixtures/, where each bad fixture must
give exactly the expected problems.

--release DIR: DIR is a clusterctl local repository, checked with the rules clusterctl enforces
(capi-contracts.md section 6, "clusterctl conventions"): exactly the folders bootstrap-capwin/vX.Y.Z/
and infrastructure-capwin/vX.Y.Z/; in them exactly <type>-components.yaml and metadata.yaml, plus
the cluster-template-*.yaml files in the infrastructure one only; metadata.yaml decoded strictly as
clusterctl >= 1.11 does (apiVersion, kind, non-empty releaseSeries of {major, minor, contract}, no
unknown or duplicate keys, one series for the version's major.minor with contract v1beta2); each
components file passes the same provider rules as the kustomize output above, every image in it has
the tag vX.Y.Z, it equals the kustomize render of its config/ root apart from that tag (compared as
objects, so order and formatting may differ) and is valid against the schemas; the templates are
byte-identical copies of templates/ with valid ${VAR} references. The self-test runs these checks
on the layouts in test/config/fixtures/release/; the default run also on a layout it assembles from
the render and templates/, as `capwin release` should.
"""
import argparse
import base64
import copy
import glob
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(HERE, 'fixtures')
MANIFESTS = os.path.join(REPO, 'test', 'manifests')
VALIDATE = os.path.join(MANIFESTS, 'validate.py')

PROVIDER_LABEL = 'cluster.x-k8s.io/provider'
CONTRACT_LABEL = 'cluster.x-k8s.io/v1beta2'
# Kinds in the components that are cluster-scoped (everything else must be in the namespace).
CLUSTER_SCOPED = {'Namespace', 'CustomResourceDefinition', 'ClusterRole', 'ClusterRoleBinding',
                  'MutatingWebhookConfiguration', 'ValidatingWebhookConfiguration', 'PriorityClass'}
# ${NAME} or ${NAME:=default}: the only variable forms the components use (drone/envsubst).
VARIABLE_RE = re.compile(r'\$\{[A-Z0-9_]+(:=[^}]*)?\}')
VARIABLE_PREFIX = 'CAPWIN_'
STANDARD_VARIABLES = set()  # standard CAPI variables, were any needed in components
CANONICAL_IMAGE_RE = re.compile(
    r'^(?P<registry>[a-z0-9-]+(\.[a-z0-9-]+)+(:[0-9]+)?|localhost(:[0-9]+)?)'
    r'/(?P<name>[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*)'
    r':(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$')

B = 'bootstrap.cluster.x-k8s.io'
I = 'infrastructure.cluster.x-k8s.io'
C = 'cluster.x-k8s.io'
EVENTS = {('', 'events'): 'create patch', ('events.k8s.io', 'events'): 'create patch'}
LEADER_ELECTION = {('coordination.k8s.io', 'leases'): 'get create update patch', **EVENTS}
# The secure metrics endpoint reviews each scrape's token (controller-runtime's
# filters.WithAuthenticationAndAuthorization): create on TokenReviews and SubjectAccessReviews.
METRICS_AUTH = {('authentication.k8s.io', 'tokenreviews'): 'create',
                ('authorization.k8s.io', 'subjectaccessreviews'): 'create'}
# What a scraper is granted by the (unbound) metrics-reader ClusterRole, exactly.
METRICS_READER_RULES = [{'nonResourceURLs': ['/metrics'], 'verbs': ['get']}]
METRICS_PORT = 8443

# What each provider may do: (apiGroup, resource) -> verbs. The ClusterRole must grant exactly
# this (nothing more, nothing less); config/README.md "RBAC" explains every line.
PROVIDERS = {
    'bootstrap': {
        'root': 'config/bootstrap',
        'label': 'bootstrap-capwin',
        'namespace': 'capwin-bootstrap-system',
        'deployment': 'capwin-bootstrap-controller-manager',
        'controllers': 'bootstrap',
        'crd_group': B,
        'cluster_role': {
            (B, 'windowskubeadmconfigs'): 'get list watch update patch',
            (B, 'windowskubeadmconfigs/status'): 'get update patch',
            (B, 'windowskubeadmconfigs/finalizers'): 'update',
            (B, 'windowskubeadmconfigtemplates'): 'get list watch',
            (C, 'clusters'): 'get list watch',
            (C, 'machines'): 'get list watch',
            ('', 'secrets'): 'get list watch create update patch delete',
            **EVENTS,
            **METRICS_AUTH,
        },
        'metrics_reader': 'capwin-bootstrap-metrics-reader',
        'metrics_service': 'capwin-bootstrap-controller-manager-metrics-service',
        'role': LEADER_ELECTION,
        'secrets': {},
    },
    'infrastructure': {
        'root': 'config/infrastructure',
        'label': 'infrastructure-capwin',
        'namespace': 'capwin-infrastructure-system',
        'deployment': 'capwin-infrastructure-controller-manager',
        'controllers': 'azure,aws',
        'crd_group': I,
        'cluster_role': {
            (I, 'azurewindowsmachines'): 'get list watch update patch',
            (I, 'awswindowsmachines'): 'get list watch update patch',
            (I, 'azurewindowsmachines/status'): 'get update patch',
            (I, 'awswindowsmachines/status'): 'get update patch',
            (I, 'azurewindowsmachines/finalizers'): 'update',
            (I, 'awswindowsmachines/finalizers'): 'update',
            (I, 'azurewindowsmachinetemplates'): 'get list watch update patch',
            (I, 'awswindowsmachinetemplates'): 'get list watch update patch',
            (I, 'azurewindowsmachinetemplates/status'): 'get update patch',
            (I, 'awswindowsmachinetemplates/status'): 'get update patch',
            (I, 'azureclusters'): 'get list watch',
            (I, 'awsclusters'): 'get list watch',
            (I, 'azureclusteridentities'): 'get list watch',
            (I, 'awsclustercontrolleridentities'): 'get list watch',
            (I, 'awsclusterroleidentities'): 'get list watch',
            (I, 'awsclusterstaticidentities'): 'get list watch',
            (C, 'clusters'): 'get list watch',
            (C, 'machines'): 'get list watch',
            (C, 'machinedeployments'): 'get list watch',
            ('bootstrap.cluster.x-k8s.io', 'windowskubeadmconfigs'): 'get',
            ('', 'namespaces'): 'get',
            ('', 'secrets'): 'get list watch create patch',
            **EVENTS,
            **METRICS_AUTH,
        },
        'metrics_reader': 'capwin-infrastructure-metrics-reader',
        'metrics_service': 'capwin-infrastructure-controller-manager-metrics-service',
        'role': LEADER_ELECTION,
        'secrets': {
            'capwin-azure-credentials': ['AZURE_TENANT_ID', 'AZURE_CLIENT_ID', 'AZURE_CLIENT_SECRET',
                                         'AZURE_SUBSCRIPTION_ID'],
            'capwin-aws-credentials': ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_REGION'],
        },
    },
}


class Fatal(Exception):
    """A problem that stops the run (exit 2), e.g. kubectl missing."""


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

def render(root):
    """`kubectl kustomize ROOT` (ROOT relative to the repo), with no flags: every root must build with
    kustomize's default load restrictor, which refuses files outside a kustomization's folder."""
    kubectl = shutil.which('kubectl')
    if not kubectl:
        raise Fatal('kubectl not found in PATH: it renders the kustomize roots '
                    '(kubectl kustomize, kustomize v5 built in); install kubectl >= 1.27')
    p = subprocess.run([kubectl, 'kustomize', os.path.join(REPO, root)], capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError('kubectl kustomize %s failed (rc=%d); it must build without flags '
                             '(no --load-restrictor):\n%s' % (root, p.returncode, p.stderr.strip()))
    return p.stdout


def load_docs(text):
    return [d for d in yaml.safe_load_all(text) if d is not None]


# --------------------------------------------------------------------------------------------
# The clusterctl rules on one components stream
# --------------------------------------------------------------------------------------------

def ident(o):
    md = o.get('metadata') or {}
    return '%s/%s' % (o.get('kind', '?'), md.get('name', '?'))


def pluralize(kind):
    """Lower-case plural as Go flect does it for the usual cases (CAPI computes CRD names so)."""
    k = kind.lower()
    if re.search(r'(s|x|z|ch|sh)$', k):
        return k + 'es'
    if re.search(r'[^aeiou]y$', k):
        return k[:-1] + 'ies'
    return k + 's'


def variable_problems(text, prefix=VARIABLE_PREFIX):
    """Malformed ${...} references; with a prefix, names not starting with it (but standard ones)."""
    out = []
    for m in re.finditer(r'\$\{', text):
        end = text.find('}', m.start())
        newline = text.find('\n', m.start())
        if end < 0 or (0 <= newline < end):
            ref = text[m.start():newline if newline >= 0 else len(text)]
            out.append('variables: %r is not closed on its line' % ref)
            continue
        ref = text[m.start():end + 1]
        if not VARIABLE_RE.fullmatch(ref):
            out.append('variables: %s must look like ${NAME} or ${NAME:=default} with NAME in '
                       '[A-Z0-9_]' % ref)
            continue
        name = re.match(r'\$\{([A-Z0-9_]+)', ref).group(1)
        if prefix and not name.startswith(prefix) and name not in STANDARD_VARIABLES:
            out.append('variables: ${%s} does not start with %s' % (name, prefix))
    return out


def variables_in(text):
    """{name: default or None} of every ${...} reference."""
    out = {}
    for m in re.finditer(r'\$\{([A-Z0-9_]+)(?::=([^}]*))?\}', text):
        out[m.group(1)] = m.group(2)
    return out


def permissions(role, who):
    """(apiGroup, resource) -> set of verbs, plus problems (wildcards, resourceNames, URLs)."""
    perms, problems = {}, []
    for i, rule in enumerate(role.get('rules') or []):
        where = '%s rules[%d]' % (who, i)
        for field in ('apiGroups', 'resources', 'verbs', 'resourceNames', 'nonResourceURLs'):
            if any('*' in str(v) for v in rule.get(field) or []):
                problems.append('rbac: %s: "*" in %s' % (where, field))
        if rule.get('nonResourceURLs'):
            problems.append('rbac: %s: nonResourceURLs are not needed by a controller' % where)
        for g in rule.get('apiGroups') or []:
            for r in rule.get('resources') or []:
                perms.setdefault((g, r), set()).update(rule.get('verbs') or [])
    return perms, problems


def compare_permissions(perms, expected, who):
    out = []
    for key in sorted(set(perms) | set(expected)):
        have, want = perms.get(key, set()), set(expected.get(key, '').split())
        res = '%s%s' % (key[0] + '/' if key[0] else 'core/', key[1])
        if have - want:
            out.append('rbac: %s grants %s on %s beyond what the controllers need' % (
                who, ' '.join(sorted(have - want)), res))
        if want - have:
            out.append('rbac: %s lacks %s on %s' % (who, ' '.join(sorted(want - have)), res))
    return out


def bind_address_problem(flag, value):
    if value == '0':
        return None
    host, sep, port = value.rpartition(':')
    try:
        if host:  # ':PORT' is every interface, as Go's net.Listen reads it (capwin does too)
            ipaddress.ip_address(host.strip('[]'))
        ok = sep and port.isdigit()
    except ValueError:
        ok = False
    if not ok:
        return ('deployment: %s=%s: capwin reads IP:PORT (e.g. 0.0.0.0:9440), :PORT (every '
                'interface), or "0" to disable; not a host name' % (flag, value))
    return None


def deployment_problems(docs, spec):
    out = []
    label = spec['label']
    deps = [d for d in docs if d.get('kind') == 'Deployment'
            and PROVIDER_LABEL in ((d.get('metadata') or {}).get('labels') or {})]
    if len(deps) != 1:
        return ['deployment: %d Deployments labelled %s; want exactly 1' % (len(deps), PROVIDER_LABEL)]
    d = deps[0]
    name = d['metadata'].get('name')
    if spec.get('deployment') and name != spec['deployment']:
        out.append('deployment: named %s; want %s' % (name, spec['deployment']))
    tpl = (d.get('spec') or {}).get('template') or {}
    if ((tpl.get('metadata') or {}).get('labels') or {}).get(PROVIDER_LABEL) != label:
        out.append('deployment: pod template lacks label %s=%s' % (PROVIDER_LABEL, label))
    pod = tpl.get('spec') or {}
    containers = pod.get('containers') or []
    names = [c.get('name') for c in containers]
    if 'manager' not in names:
        return out + ['deployment: no container named "manager" (have %s); clusterctl and Tilt '
                      'look for it' % ', '.join(map(str, names))]
    if len(containers) != 1:
        out.append('deployment: %d containers (%s); want just "manager"' % (
            len(containers), ', '.join(map(str, names))))
    c = containers[names.index('manager')]

    image = c.get('image', '')
    m = re.fullmatch(r'\$\{CAPWIN_IMAGE:=([^}]*)\}', image)
    canonical = m.group(1) if m else image
    if not CANONICAL_IMAGE_RE.match(canonical):
        out.append('deployment: image %r is not ${CAPWIN_IMAGE:=registry/name:tag} or a canonical '
                   'registry/name:tag' % image)
    if c.get('command') != ['/manager']:
        out.append('deployment: command %r; want ["/manager"]' % c.get('command'))
    args = c.get('args') or []
    if not args or args[0] != 'manager':
        out.append('deployment: args must start with the "manager" subcommand, got %r' % args[:1])
    flags = {}
    for a in args[1:]:
        k, _, v = a.partition('=')
        flags[k] = v
    if spec.get('controllers') and flags.get('--controllers') != spec['controllers']:
        out.append('deployment: --controllers=%s; want %s' % (flags.get('--controllers'),
                                                              spec['controllers']))
    if '--leader-elect' not in flags:
        out.append('deployment: --leader-elect missing')
    if '--watch-filter' in flags and flags['--watch-filter'] in ('', '${CAPWIN_WATCH_FILTER:=}'):
        out.append('deployment: --watch-filter with an empty value filters out every object')
    for flag in ('--health-probe-bind-address', '--metrics-bind-address'):
        if flag in flags:
            p = bind_address_problem(flag, flags[flag])
            if p:
                out.append(p)
    probe_port = flags.get('--health-probe-bind-address', '0.0.0.0:9440').rpartition(':')[2]
    # Metrics: the manager's secure default (HTTPS, TokenReview + SubjectAccessReview) on
    # :8443, declared as the container port "metrics" that the metrics Service targets.
    if flags.get('--metrics-secure', 'true') not in ('true', ''):
        out.append('deployment: --metrics-secure=%s serves metrics to anyone; the components keep '
                   'the secure default' % flags['--metrics-secure'])
    metrics_port = flags.get('--metrics-bind-address', ':%d' % METRICS_PORT).rpartition(':')[2]
    if metrics_port != str(METRICS_PORT):
        out.append('deployment: --metrics-bind-address=%s; want :%d (every interface, so the '
                   'metrics Service reaches it)' % (flags.get('--metrics-bind-address'), METRICS_PORT))

    env = {e.get('name'): e for e in c.get('env') or []}
    for var, path in (('POD_NAME', 'metadata.name'), ('POD_NAMESPACE', 'metadata.namespace')):
        got = (((env.get(var) or {}).get('valueFrom') or {}).get('fieldRef') or {}).get('fieldPath')
        if got != path:
            out.append('deployment: env %s must come from the downward API (%s)' % (var, path))
    ports = {p.get('name'): p.get('containerPort') for p in c.get('ports') or []}
    if str(ports.get('healthz')) != probe_port:
        out.append('deployment: port "healthz" is %s; the health probe listens on %s' % (
            ports.get('healthz'), probe_port))
    if str(ports.get('metrics')) != metrics_port:
        out.append('deployment: port "metrics" is %s; metrics are served on %s' % (
            ports.get('metrics'), metrics_port))
    for probe, path in (('livenessProbe', '/healthz'), ('readinessProbe', '/readyz')):
        get = (c.get(probe) or {}).get('httpGet') or {}
        if get.get('path') != path or str(get.get('port')) not in ('healthz', probe_port):
            out.append('deployment: %s must be GET %s on port healthz' % (probe, path))
    res = c.get('resources') or {}
    for section, keys in (('requests', ('cpu', 'memory')), ('limits', ('memory',))):
        for k in keys:
            if k not in (res.get(section) or {}):
                out.append('deployment: resources.%s.%s missing' % (section, k))

    csc = c.get('securityContext') or {}
    for field, want in (('allowPrivilegeEscalation', False), ('readOnlyRootFilesystem', True),
                        ('runAsNonRoot', True), ('runAsUser', 65532)):
        if csc.get(field) != want:
            out.append('deployment: container securityContext.%s must be %s (is %s)' % (
                field, str(want).lower() if isinstance(want, bool) else want, csc.get(field)))
    if csc.get('privileged'):
        out.append('deployment: container securityContext.privileged must not be true')
    caps = csc.get('capabilities') or {}
    if 'ALL' not in (caps.get('drop') or []) or caps.get('add'):
        out.append('deployment: container securityContext.capabilities must drop ALL and add none')
    if (csc.get('seccompProfile') or {}).get('type') != 'RuntimeDefault':
        out.append('deployment: container securityContext.seccompProfile.type must be RuntimeDefault')
    psc = pod.get('securityContext') or {}
    for field, want in (('runAsNonRoot', True), ('runAsUser', 65532)):
        if psc.get(field) != want:
            out.append('deployment: pod securityContext.%s must be %s (is %s)' % (
                field, str(want).lower() if isinstance(want, bool) else want, psc.get(field)))
    if (psc.get('seccompProfile') or {}).get('type') != 'RuntimeDefault':
        out.append('deployment: pod securityContext.seccompProfile.type must be RuntimeDefault')
    for field in ('hostNetwork', 'hostPID', 'hostIPC'):
        if pod.get(field):
            out.append('deployment: %s must not be set' % field)
    if pod.get('terminationGracePeriodSeconds') != 10:
        out.append('deployment: terminationGracePeriodSeconds is %s; want 10' %
                   pod.get('terminationGracePeriodSeconds'))
    if (pod.get('nodeSelector') or {}).get('kubernetes.io/os') != 'linux':
        out.append('deployment: nodeSelector kubernetes.io/os: linux missing')
    if not any(t.get('key') == 'node-role.kubernetes.io/control-plane' and t.get('effect') == 'NoSchedule'
               for t in pod.get('tolerations') or []):
        out.append('deployment: no toleration for node-role.kubernetes.io/control-plane:NoSchedule')

    ns = (d.get('metadata') or {}).get('namespace')
    sas = {o['metadata']['name'] for o in docs if o.get('kind') == 'ServiceAccount'
           and o['metadata'].get('namespace') == ns}
    if pod.get('serviceAccountName') not in sas:
        out.append('deployment: serviceAccountName %s is not a ServiceAccount in %s' % (
            pod.get('serviceAccountName'), ns))
    secrets = {o['metadata']['name']: o for o in docs if o.get('kind') == 'Secret'}
    refs = [e['secretRef'] for e in c.get('envFrom') or [] if 'secretRef' in e]
    if sorted(r.get('name') for r in refs) != sorted(spec.get('secrets', {})):
        out.append('deployment: envFrom secrets %s; want %s' % (
            sorted(r.get('name') for r in refs), sorted(spec.get('secrets', {}))))
    for r in refs:
        if r.get('optional') is not True:
            out.append('deployment: envFrom secretRef %s must be optional: true (workload identity, '
                       'IRSA and instance roles need no Secret)' % r.get('name'))
        if r.get('name') not in secrets:
            out.append('deployment: envFrom secretRef %s is not a Secret of the components' %
                       r.get('name'))
    return out


def metrics_problems(docs, spec):
    """The metrics Service (port 8443 to the manager's "metrics" port, selecting its pods) and
    the metrics-reader ClusterRole (exactly GET /metrics, bound by nothing in the components)."""
    out = []
    if spec.get('metrics_service'):
        svcs = [o for o in docs if o.get('kind') == 'Service'
                and o['metadata'].get('name') == spec['metrics_service']]
        dep = next((d for d in docs if d.get('kind') == 'Deployment'), None)
        pod_labels = ((((dep or {}).get('spec') or {}).get('template') or {}).get('metadata') or {}).get(
            'labels') or {}
        if not svcs:
            out.append('metrics: no Service %s' % spec['metrics_service'])
        for svc in svcs:
            s = svc.get('spec') or {}
            ports = [p for p in s.get('ports') or [] if p.get('port') == METRICS_PORT]
            if not ports or ports[0].get('targetPort') not in ('metrics', METRICS_PORT):
                out.append('metrics: Service %s must expose port %d to the container port "metrics"' % (
                    spec['metrics_service'], METRICS_PORT))
            sel = s.get('selector') or {}
            if not sel or any(pod_labels.get(k) != v for k, v in sel.items()):
                out.append('metrics: Service %s selector %s does not select the manager pods' % (
                    spec['metrics_service'], sel))
    if spec.get('metrics_reader'):
        readers = [o for o in docs if o.get('kind') == 'ClusterRole'
                   and o['metadata'].get('name') == spec['metrics_reader']]
        if not readers:
            out.append('metrics: no ClusterRole %s for scrapers' % spec['metrics_reader'])
        elif [{k: r[k] for k in r} for r in readers[0].get('rules') or []] != METRICS_READER_RULES:
            out.append('metrics: ClusterRole %s must grant exactly %s' % (
                spec['metrics_reader'], METRICS_READER_RULES))
        for o in docs:
            ref = o.get('roleRef') or {}
            if o.get('kind') in ('RoleBinding', 'ClusterRoleBinding') and ref.get('name') == spec['metrics_reader']:
                out.append('metrics: %s binds %s; that is for the scraper to bind' % (
                    ident(o), spec['metrics_reader']))
    return out


def secret_problems(docs, spec):
    out = []
    for name, keys in spec.get('secrets', {}).items():
        s = next((o for o in docs if o.get('kind') == 'Secret' and o['metadata']['name'] == name), None)
        if s is None:
            out.append('secrets: Secret %s missing' % name)
            continue
        data = s.get('data') or {}
        if sorted(data) != sorted(keys):
            out.append('secrets: %s has keys %s; want %s' % (name, sorted(data), sorted(keys)))
        for k, v in data.items():
            if not re.fullmatch(r'\$\{CAPWIN_[A-Z0-9_]+_B64:=""\}', str(v)):
                out.append('secrets: %s.%s is %r; want ${CAPWIN_..._B64:=""}' % (name, k, v))
    return out


def components_problems(text, spec):
    """Every clusterctl / capwin rule on one rendered components stream, as problem lines."""
    out = variable_problems(text)
    docs = load_docs(text)
    label, ns_want = spec['label'], spec.get('namespace')

    namespaces = [o for o in docs if o.get('kind') == 'Namespace']
    if len(namespaces) != 1:
        out.append('namespace: %d Namespace objects (%s); clusterctl needs exactly one' % (
            len(namespaces), ', '.join(o['metadata']['name'] for o in namespaces)))
    ns = ns_want or (namespaces[0]['metadata']['name'] if namespaces else None)
    if ns_want and namespaces and ns_want not in [o['metadata']['name'] for o in namespaces]:
        out.append('namespace: no Namespace %s' % ns_want)

    for o in docs:
        md = o.get('metadata') or {}
        if o.get('kind') in CLUSTER_SCOPED:
            if md.get('namespace'):
                out.append('namespace: %s is cluster-scoped but has namespace %s' % (
                    ident(o), md['namespace']))
        elif md.get('namespace') != ns:
            out.append('namespace: %s is in namespace %s; want %s' % (ident(o), md.get('namespace'), ns))
        if (md.get('labels') or {}).get(PROVIDER_LABEL) != label:
            out.append('labels: %s lacks %s=%s' % (ident(o), PROVIDER_LABEL, label))

    for o in docs:
        if o.get('kind') != 'CustomResourceDefinition':
            continue
        s = o.get('spec') or {}
        names, group = s.get('names') or {}, s.get('group')
        want = '%s.%s' % (names.get('plural'), group)
        if o['metadata']['name'] != want:
            out.append('crds: %s is not named <plural>.<group> (%s)' % (ident(o), want))
        if names.get('plural') != pluralize(names.get('kind', '')):
            out.append('crds: %s plural %s is not the plural of kind %s (%s)' % (
                ident(o), names.get('plural'), names.get('kind'), pluralize(names.get('kind', ''))))
        served = [v['name'] for v in s.get('versions') or [] if v.get('served')]
        contract = (o['metadata'].get('labels') or {}).get(CONTRACT_LABEL)
        if contract is None:
            out.append('crds: %s lacks the contract label %s' % (ident(o), CONTRACT_LABEL))
        elif sorted(contract.split('_')) != sorted(served):
            out.append('crds: %s label %s=%s does not list the served versions %s' % (
                ident(o), CONTRACT_LABEL, contract, '_'.join(served)))
        if spec.get('crd_group') and group != spec['crd_group']:
            out.append('crds: %s is in group %s; this provider owns %s' % (ident(o), group, spec['crd_group']))

    out += deployment_problems(docs, spec)
    out += secret_problems(docs, spec)
    out += metrics_problems(docs, spec)

    # RBAC: no wildcards anywhere; bindings resolve; permissions exactly as documented.
    roles = {(o['kind'], o['metadata']['name']): o for o in docs if o.get('kind') in ('Role', 'ClusterRole')}
    reader = ('ClusterRole', spec.get('metrics_reader'))
    sas = {o['metadata']['name'] for o in docs if o.get('kind') == 'ServiceAccount'
           and o['metadata'].get('namespace') == ns}
    granted = {'ClusterRole': {}, 'Role': {}}
    for (kind, name), role in sorted(roles.items()):
        if (kind, name) == reader:
            continue  # the scraper's, checked by metrics_problems
        perms, problems = permissions(role, '%s/%s' % (kind, name))
        out += problems
        for k, v in perms.items():
            granted[kind].setdefault(k, set()).update(v)
    for o in docs:
        if o.get('kind') not in ('RoleBinding', 'ClusterRoleBinding'):
            continue
        ref = o.get('roleRef') or {}
        if (ref.get('kind'), ref.get('name')) not in roles:
            out.append('rbac: %s refers to %s/%s, not in the components' % (
                ident(o), ref.get('kind'), ref.get('name')))
        for s in o.get('subjects') or []:
            if s.get('kind') == 'ServiceAccount' and (s.get('name') not in sas or s.get('namespace') != ns):
                out.append('rbac: %s subject ServiceAccount %s/%s is not the provider\'s' % (
                    ident(o), s.get('namespace'), s.get('name')))
    if 'cluster_role' in spec:
        out += compare_permissions(granted['ClusterRole'], spec['cluster_role'], 'ClusterRole')
        out += compare_permissions(granted['Role'], spec['role'], 'Role')
    for o in docs:
        if o.get('kind') == 'CustomResourceDefinition':
            plural = o['spec']['names']['plural']
            have = granted['ClusterRole'].get((o['spec']['group'], plural), set())
            if not {'get', 'list', 'watch'} <= have:
                out.append('rbac: the controller cannot get/list/watch its own %s' % o['metadata']['name'])
    return out


# --------------------------------------------------------------------------------------------
# A `capwin release` output: a clusterctl local repository <provider-label>/<version>/...
# --------------------------------------------------------------------------------------------

RELEASE_VERSION_RE = re.compile(r'^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)'
                                r'(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$')
METADATA_API_VERSION = 'clusterctl.cluster.x-k8s.io/v1alpha3'
CONTRACT = CONTRACT_LABEL.rpartition('/')[2]  # the contract our CRDs carry, so metadata.yaml's too
TEMPLATES = os.path.join(REPO, 'templates')
TEMPLATE_RE = re.compile(r'^cluster-template-[^/]+\.yaml$')
POD_TEMPLATE_KINDS = {'Deployment', 'DaemonSet', 'StatefulSet', 'ReplicaSet', 'Job'}
IMAGE_TAG_RE = re.compile(r':[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(?=\}?$)')


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys, as clusterctl's strict decoding does."""


def _mapping_without_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, 'duplicate key %r' % (key,), key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def strict_docs(text):
    return [d for d in yaml.load_all(text, Loader=StrictLoader) if d is not None]


def one_line(err):
    return ' '.join(str(err).split())


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def version_series(version):
    m = RELEASE_VERSION_RE.match(version)
    return int(m.group(1)), int(m.group(2))


def metadata_problems(text, version):
    """clusterctl's (strict) reading of metadata.yaml for a release of `version`."""
    try:
        docs = strict_docs(text)
    except yaml.YAMLError as e:
        return ['not valid YAML: %s' % one_line(e)]
    if len(docs) != 1 or not isinstance(docs[0], dict):
        return ['want exactly one YAML mapping (a Metadata object), found %d document(s)' % len(docs)]
    m, out = docs[0], []
    for k in m:
        # Metadata = TypeMeta + ObjectMeta (`metadata`, never needed) + releaseSeries.
        if k not in ('apiVersion', 'kind', 'metadata', 'releaseSeries'):
            out.append('unknown key %r (clusterctl >= 1.11 decodes metadata.yaml strictly)' % (k,))
    if m.get('apiVersion') != METADATA_API_VERSION:
        out.append('apiVersion is %r; want %s' % (m.get('apiVersion'), METADATA_API_VERSION))
    if m.get('kind') != 'Metadata':
        out.append('kind is %r; want Metadata' % (m.get('kind'),))
    if 'metadata' in m and not isinstance(m['metadata'], dict):
        out.append('metadata is %r; want a mapping (or leave it out)' % (m['metadata'],))
    series = m.get('releaseSeries')
    if not isinstance(series, list) or not series:
        return out + ['releaseSeries is %r; want a non-empty list of {major, minor, contract}' % (series,)]
    seen = {}
    for i, s in enumerate(series):
        where = 'releaseSeries[%d]' % i
        if not isinstance(s, dict):
            out.append('%s is %r; want a mapping {major, minor, contract}' % (where, s))
            continue
        ok = True
        for k in s:
            if k not in ('major', 'minor', 'contract'):
                out.append('%s: unknown key %r' % (where, k))
                ok = False
        for k in ('major', 'minor'):
            if k not in s:
                out.append('%s: %s missing' % (where, k))
                ok = False
            elif not is_int(s[k]) or s[k] < 0:
                out.append('%s: %s is %r; want a non-negative integer' % (where, k, s[k]))
                ok = False
        if 'contract' not in s:
            out.append('%s: contract missing' % where)
            ok = False
        elif not isinstance(s['contract'], str) or not re.fullmatch(r'v[0-9]+((alpha|beta)[0-9]+)?',
                                                                    s['contract']):
            out.append('%s: contract is %r; want a Cluster API contract such as %s' % (
                where, s['contract'], CONTRACT))
            ok = False
        if ok:
            seen.setdefault((s['major'], s['minor']), []).append(s['contract'])
    for (major, minor), contracts in sorted(seen.items()):
        if len(contracts) > 1:
            out.append('releaseSeries: %d entries for %d.%d; want one' % (len(contracts), major, minor))
    major, minor = version_series(version)
    contracts = seen.get((major, minor))
    if not contracts:
        out.append('releaseSeries has no valid entry for %d.%d (the series of %s); clusterctl refuses '
                   'the release' % (major, minor, version))
    elif contracts[0] != CONTRACT:
        out.append('the %d.%d series has contract %s; the CRDs carry %s, so want %s' % (
            major, minor, contracts[0], CONTRACT_LABEL, CONTRACT))
    return out


def pod_containers(docs):
    """(object, container) for every container and init container of every pod template."""
    for o in docs:
        if o.get('kind') in POD_TEMPLATE_KINDS:
            pod = (((o.get('spec') or {}).get('template') or {}).get('spec')) or {}
            for c in (pod.get('initContainers') or []) + (pod.get('containers') or []):
                yield o, c


def image_tag_problems(docs, version):
    out, seen = [], 0
    for o, c in pod_containers(docs):
        seen += 1
        image = str(c.get('image', ''))
        m = re.fullmatch(r'\$\{[A-Z0-9_]+:=([^}]*)\}', image)
        cm = CANONICAL_IMAGE_RE.match(m.group(1) if m else image)
        who = '%s container %s' % (ident(o), c.get('name'))
        if not cm:
            out.append('image: %s: %r has no canonical registry/name:tag (as a ${VAR:=default} default '
                       'or the image itself)' % (who, image))
        elif cm.group('tag') != version:
            out.append('image: %s: %s has tag %s; want %s' % (who, image, cm.group('tag'), version))
    if not seen:
        out.append('image: no pod template with containers')
    return out


def without_image_tags(docs):
    docs = copy.deepcopy(docs)
    for _, c in pod_containers(docs):
        if isinstance(c.get('image'), str):
            c['image'] = IMAGE_TAG_RE.sub(':<tag>', c['image'])
    return docs


MISSING = type('Missing', (), {'__repr__': lambda self: 'absent'})()


def first_difference(there, here, path=''):
    """(path, value there, value here) of the first difference, or None. MISSING when absent."""
    if isinstance(there, dict) and isinstance(here, dict):
        for k in sorted(set(there) | set(here), key=str):
            p = '%s.%s' % (path, k) if path else str(k)
            if k not in there or k not in here:
                return p, there.get(k, MISSING), here.get(k, MISSING)
            d = first_difference(there[k], here[k], p)
            if d:
                return d
        return None
    if isinstance(there, list) and isinstance(here, list):
        for i, (a, b) in enumerate(zip(there, here)):
            d = first_difference(a, b, '%s[%d]' % (path, i))
            if d:
                return d
        if len(there) != len(here):
            return path, '%d items' % len(there), '%d items' % len(here)
        return None
    if type(there) is not type(here) or there != here:
        return path, there, here
    return None


def short(v):
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + '...'


def render_drift(docs, ref_docs, what):
    """How `docs` differ from the render `ref_docs` (named `what`), image tags aside."""
    def index(ds):
        out = {}
        for o in without_image_tags(ds):
            md = o.get('metadata') or {}
            out.setdefault((str(o.get('apiVersion')), str(o.get('kind')), str(md.get('namespace') or ''),
                            str(md.get('name'))), []).append(o)
        return out
    here, there = index(docs), index(ref_docs)
    out = []
    for key in sorted(set(here) | set(there)):
        name = '%s/%s' % (key[1], key[3])
        if key not in there:
            out.append('%s is not in %s' % (name, what))
        elif key not in here:
            out.append('%s of %s is missing' % (name, what))
        elif len(here[key]) != len(there[key]):
            out.append('%s appears %d times; %d in %s' % (name, len(here[key]), len(there[key]), what))
        else:
            for a, b in zip(there[key], here[key]):
                d = first_difference(a, b)
                if d:
                    out.append('%s differs from %s (image tags aside) at %s: %s there, %s here' % (
                        name, what, d[0], short(d[1]), short(d[2])))
                    break
    return out


def is_template_name(name):
    return name.startswith('cluster-template') or name.startswith('clusterclass')


def release_checks(root, version, reference, templates_dir):
    """[(case name, problems)] for the clusterctl local repository `root`, a release of `version`.

    reference: {provider key: (what, text)}, the kustomize render each components file must equal
    apart from the image tag (a provider missing from it is reported, not compared);
    templates_dir: where the cluster-template-*.yaml come from."""
    if not os.path.isdir(root):
        return [('release layout', ['layout: %s is not a directory' % root])]
    major, minor = version_series(version)
    labels = {p['label']: key for key, p in PROVIDERS.items()}
    layout, templates, cases = [], [], []
    infra_dir = None

    def misplaced_template(rel):
        templates.append('templates: %s: templates belong in infrastructure-capwin/%s/ only' % (
            rel, version))

    for name in sorted(os.listdir(root)):
        if name in labels:
            if not os.path.isdir(os.path.join(root, name)):
                layout.append('layout: %s is not a directory' % name)
        elif is_template_name(name):
            misplaced_template(name)
        else:
            layout.append('layout: %s: unexpected; a capwin release holds only %s' % (
                name, ' and '.join(sorted(labels))))
    for key, p in PROVIDERS.items():
        label = p['label']
        pdir, vdir = os.path.join(root, label), os.path.join(root, label, version)
        rel_v = '%s/%s' % (label, version)
        meta_case = '%s: metadata.yaml (strict %s, %d.%d has contract %s)' % (
            label, METADATA_API_VERSION.rpartition('/')[2], major, minor, CONTRACT)
        comp_name = '%s-components.yaml' % key
        if not os.path.isdir(pdir):
            layout.append('layout: %s missing' % label)
        else:
            for name in sorted(os.listdir(pdir)):
                if name == version:
                    continue
                if is_template_name(name):
                    misplaced_template('%s/%s' % (label, name))
                else:
                    layout.append('layout: %s/%s: unexpected; want only the version folder %s' % (
                        label, name, version))
            if not os.path.isdir(vdir):
                layout.append('layout: %s missing' % rel_v)
        if not os.path.isdir(vdir):
            cases.append((meta_case, ['%s/metadata.yaml not checked: no %s' % (rel_v, rel_v)]))
            cases.append(('%s: components' % label,
                          ['%s/%s not checked: no %s' % (rel_v, comp_name, rel_v)]))
            continue
        if key == 'infrastructure':
            infra_dir = vdir
        wanted = [comp_name, 'metadata.yaml']
        for name in sorted(os.listdir(vdir)):
            rel = '%s/%s' % (rel_v, name)
            if name in wanted:
                if not os.path.isfile(os.path.join(vdir, name)):
                    layout.append('layout: %s is not a file' % rel)
            elif key == 'infrastructure' and TEMPLATE_RE.match(name):
                continue  # the templates case checks them
            elif key != 'infrastructure' and is_template_name(name):
                misplaced_template(rel)
            else:
                layout.append('layout: %s: unexpected; clusterctl reads %s here' % (
                    rel, ', '.join(wanted + (['cluster-template-<flavour>.yaml']
                                             if key == 'infrastructure' else []))))

        rel = '%s/metadata.yaml' % rel_v
        path = os.path.join(vdir, 'metadata.yaml')
        if os.path.isfile(path):
            cases.append((meta_case, ['%s: %s' % (rel, x) for x in
                                      metadata_problems(read_text(path), version)]))
        else:
            cases.append((meta_case, ['%s missing' % rel]))

        rel = '%s/%s' % (rel_v, comp_name)
        path = os.path.join(vdir, comp_name)
        if not os.path.isfile(path):
            cases.append(('%s: components' % label, ['%s missing' % rel]))
            continue
        text = read_text(path)
        try:
            docs = strict_docs(text)
            assert docs and all(isinstance(d, dict) for d in docs), 'not a stream of objects'
        except (yaml.YAMLError, AssertionError) as e:
            cases.append(('%s: components' % label, ['%s: not valid YAML: %s' % (rel, one_line(e))]))
            continue
        try:
            rules = components_problems(text, p)
        except Exception as e:  # a shape the rules do not expect: report, keep checking the rest
            rules = ['the rules could not run: %s: %s' % (type(e).__name__, one_line(e))]
        cases.append(('%s: components: clusterctl rules, Deployment, RBAC table, variables' % label,
                      ['%s: %s' % (rel, x) for x in rules]))
        cases.append(('%s: components: every image tagged %s' % (label, version),
                      ['%s: %s' % (rel, x) for x in image_tag_problems(docs, version)]))
        ref = reference.get(key)
        what = ref[0] if ref else 'kubectl kustomize %s' % p['root']
        drift = (render_drift(docs, load_docs(ref[1]), what) if ref
                 else ['not compared: no render of %s' % p['root']])
        cases.append(('%s: components: equal to %s apart from the image tag' % (label, what),
                      ['%s: %s' % (rel, x) for x in drift]))

    sources = {os.path.basename(f): f
               for f in glob.glob(os.path.join(templates_dir, 'cluster-template-*.yaml'))}
    src_rel = os.path.relpath(templates_dir, REPO) + '/'
    if infra_dir:
        rel_v = 'infrastructure-capwin/%s' % version
        present = sorted(n for n in os.listdir(infra_dir) if TEMPLATE_RE.match(n))
        for name in present:
            rel = '%s/%s' % (rel_v, name)
            if not os.path.isfile(os.path.join(infra_dir, name)):
                templates.append('templates: %s is not a file' % rel)
                continue
            data = open(os.path.join(infra_dir, name), 'rb').read()
            if name not in sources:
                templates.append('templates: %s is not in %s' % (rel, src_rel))
            elif data != open(sources[name], 'rb').read():
                templates.append('templates: %s differs from %s' % (
                    rel, os.path.relpath(sources[name], REPO)))
            try:
                text = data.decode('utf-8')
            except UnicodeDecodeError as e:
                templates.append('templates: %s is not UTF-8: %s' % (rel, e))
                continue
            templates += ['templates: %s: %s' % (rel, x) for x in variable_problems(text, prefix=None)]
        for name in sorted(set(sources) - set(present)):
            templates.append('templates: %s of %s is missing' % (name, src_rel))
    else:
        templates.append('templates: not checked: no infrastructure-capwin/%s' % version)
    cases.insert(0, ('release layout: %s/%s, %s/%s, file names' % (
        PROVIDERS['bootstrap']['label'], version, PROVIDERS['infrastructure']['label'], version), layout))
    cases.append(('templates: cluster-template-*.yaml in infrastructure-capwin only, as in %s, valid '
                  '${VAR}s' % src_rel, templates))
    return cases


def read_text(path):
    return open(path, encoding='utf-8', errors='replace').read()


def retagged(text, version):
    """The components `text` with every pod template image's tag set to `version` (the way
    `capwin release` is meant to produce its components; the self-test's oracle)."""
    out = text
    for _, c in pod_containers(load_docs(text)):
        image = c.get('image', '')
        out = out.replace(image, IMAGE_TAG_RE.sub(':' + version, image))
    return out


def assemble_release(out, version, rendered, templates_dir=TEMPLATES):
    """Write by hand the layout `capwin release --version VERSION --out OUT` should write."""
    major, minor = version_series(version)
    for key, p in PROVIDERS.items():
        d = os.path.join(out, p['label'], version)
        os.makedirs(d)
        with open(os.path.join(d, '%s-components.yaml' % key), 'w', encoding='utf-8') as f:
            f.write(retagged(rendered[key], version))
        with open(os.path.join(d, 'metadata.yaml'), 'w', encoding='utf-8') as f:
            f.write('apiVersion: %s\nkind: Metadata\nreleaseSeries:\n- major: %d\n  minor: %d\n'
                    '  contract: %s\n' % (METADATA_API_VERSION, major, minor, CONTRACT))
        if key == 'infrastructure':
            for t in glob.glob(os.path.join(templates_dir, 'cluster-template-*.yaml')):
                shutil.copyfile(t, os.path.join(d, os.path.basename(t)))


# --------------------------------------------------------------------------------------------
# .dockerignore (Docker's rules, enough for our patterns: *, ?, **, !exceptions, parents)
# --------------------------------------------------------------------------------------------

def dockerignore_patterns(text):
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        neg = line.startswith('!')
        pat = os.path.normpath(line[1:] if neg else line).lstrip('/')
        rx = ''
        i = 0
        while i < len(pat):
            if pat.startswith('**/', i):
                rx += '(.*/)?'
                i += 3
            elif pat.startswith('**', i):
                rx += '.*'
                i += 2
            elif pat[i] == '*':
                rx += '[^/]*'
                i += 1
            elif pat[i] == '?':
                rx += '[^/]'
                i += 1
            else:
                rx += re.escape(pat[i])
                i += 1
        out.append((neg, re.compile(rx + '$')))
    return out


def dockerignored(patterns, path):
    """Whether Docker leaves `path` (relative to the context) out of the build context."""
    parts = path.split('/')
    candidates = ['/'.join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for neg, rx in patterns:
        if any(rx.match(c) for c in candidates):
            excluded = not neg
    return excluded


def embedded_files():
    """Repo-relative paths the binary embeds with include_str!/include_bytes!."""
    out = set()
    for src in glob.glob(os.path.join(REPO, 'controllers', '**', 'src', '**', '*.rs'), recursive=True):
        text = open(src, encoding='utf-8').read()
        for m in re.finditer(r'include_(?:str|bytes)!\(\s*"([^"]+)"\s*\)', text):
            p = os.path.normpath(os.path.join(os.path.dirname(src), m.group(1)))
            out.add(os.path.relpath(p, REPO))
    return sorted(out)


# --------------------------------------------------------------------------------------------
# Test cases
# --------------------------------------------------------------------------------------------

passed, failed = 0, 0


def run_case(name, fn):
    global passed, failed
    try:
        fn()
    except AssertionError as e:
        failed += 1
        print('FAIL %s: %s' % (name, e))
    else:
        passed += 1
        print('ok   %s' % name)


def expect_clean(problems):
    assert not problems, '\n  ' + '\n  '.join(problems)


def validate(text, *args):
    """validate.py on a stream (stdin); returns (rc, output)."""
    p = subprocess.run([sys.executable, VALIDATE, *args, '-'], input=text, capture_output=True,
                       text=True, cwd=REPO)
    return p.returncode, (p.stdout + p.stderr).strip()


def fixture(name):
    return open(os.path.join(FIXTURES, name), encoding='utf-8').read()


# Each bad fixture: exactly these problems (with the bootstrap provider's rules).
FIXTURE_EXPECTATIONS = {
    'bad-two-namespaces.yaml': [
        'namespace: 2 Namespace objects (capwin-bootstrap-system, capwin-extra); clusterctl needs '
        'exactly one',
    ],
    'bad-wildcard-rbac.yaml': [
        'rbac: ClusterRole/capwin-bootstrap-manager-role rules[5]: "*" in verbs',
        'rbac: ClusterRole/capwin-bootstrap-manager-role rules[6]: "*" in resources',
        'rbac: ClusterRole grants * on core/secrets beyond what the controllers need',
        'rbac: ClusterRole lacks create delete get list patch update watch on core/secrets',
        'rbac: ClusterRole grants create delete deletecollection get list patch update watch on '
        'core/* beyond what the controllers need',
    ],
    'bad-container-name.yaml': [
        'deployment: no container named "manager" (have controller); clusterctl and Tilt look for it',
    ],
    'bad-metrics.yaml': [
        'deployment: --metrics-secure=false serves metrics to anyone; the components keep the secure '
        'default',
        "metrics: Service capwin-bootstrap-controller-manager-metrics-service selector "
        "{'cluster.x-k8s.io/provider': 'bootstrap-capwin', 'control-plane': 'other'} does not select "
        "the manager pods",
        "metrics: ClusterRole capwin-bootstrap-metrics-reader must grant exactly "
        "[{'nonResourceURLs': ['/metrics'], 'verbs': ['get']}]",
        'metrics: ClusterRoleBinding/capwin-bootstrap-metrics-reader-binding binds '
        'capwin-bootstrap-metrics-reader; that is for the scraper to bind',
        'rbac: ClusterRole lacks create on authorization.k8s.io/subjectaccessreviews',
    ],
    'bad-namespace-and-labels.yaml': [
        'namespace: ServiceAccount/capwin-bootstrap-manager is in namespace default; want '
        'capwin-bootstrap-system',
        'namespace: ClusterRole/capwin-bootstrap-manager-role is cluster-scoped but has namespace '
        'capwin-bootstrap-system',
        'labels: ClusterRoleBinding/capwin-bootstrap-manager-rolebinding lacks '
        'cluster.x-k8s.io/provider=bootstrap-capwin',
        'rbac: ClusterRoleBinding/capwin-bootstrap-manager-rolebinding subject ServiceAccount '
        'capwin-bootstrap-system/capwin-bootstrap-manager is not the provider\'s',
        'rbac: RoleBinding/capwin-bootstrap-leader-election-rolebinding subject ServiceAccount '
        'capwin-bootstrap-system/capwin-bootstrap-manager is not the provider\'s',
        'rbac: ClusterRoleBinding/capwin-bootstrap-metrics-auth-rolebinding subject ServiceAccount '
        'capwin-bootstrap-system/capwin-bootstrap-manager is not the provider\'s',
        'deployment: serviceAccountName capwin-bootstrap-manager is not a ServiceAccount in '
        'capwin-bootstrap-system',
    ],
    'bad-crd.yaml': [
        'crds: CustomResourceDefinition/windowskubeadmconfig.bootstrap.cluster.x-k8s.io is not named '
        '<plural>.<group> (windowskubeadmconfigs.bootstrap.cluster.x-k8s.io)',
        'crds: CustomResourceDefinition/windowskubeadmconfig.bootstrap.cluster.x-k8s.io lacks the '
        'contract label cluster.x-k8s.io/v1beta2',
    ],
    'bad-security-context.yaml': [
        'deployment: container securityContext.readOnlyRootFilesystem must be true (is None)',
        'deployment: container securityContext.runAsNonRoot must be true (is False)',
        'deployment: container securityContext.capabilities must drop ALL and add none',
        'deployment: pod securityContext.seccompProfile.type must be RuntimeDefault',
        'deployment: livenessProbe must be GET /healthz on port healthz',
        'deployment: resources.limits.memory missing',
        'deployment: --health-probe-bind-address=localhost:9440: capwin reads IP:PORT (e.g. '
        '0.0.0.0:9440), :PORT (every interface), or "0" to disable; not a host name',
    ],
    'bad-variables.yaml': [
        'variables: ${capwin_image} must look like ${NAME} or ${NAME:=default} with NAME in [A-Z0-9_]',
        'variables: ${BOOTSTRAP_TOKEN_TTL} does not start with CAPWIN_',
        'variables: ${CAPWIN_EXTRA:-x} must look like ${NAME} or ${NAME:=default} with NAME in [A-Z0-9_]',
        "variables: '${CAPWIN_UNCLOSED' is not closed on its line",
        'deployment: image \'${capwin_image}\' is not ${CAPWIN_IMAGE:=registry/name:tag} or a '
        'canonical registry/name:tag',
        'deployment: --watch-filter with an empty value filters out every object',
    ],
}


RELEASE_FIXTURES = os.path.join(FIXTURES, 'release')
RELEASE_FIXTURE_VERSION = 'v0.1.0'
# release/<name>/ is release/good/ (symlinks to its files) with the changes the files' headers and
# these comments name; checked as a release of v0.1.0 against the stand-in renders
# fixtures/good-components.yaml and fixtures/good-infrastructure-components.yaml and the stand-in
# templates in release/templates/. Each must give exactly these problems.
RELEASE_FIXTURE_EXPECTATIONS = {
    # infrastructure metadata.yaml: contract v1beta1 for 0.1.
    'bad-metadata-contract': [
        'infrastructure-capwin/v0.1.0/metadata.yaml: the 0.1 series has contract v1beta1; the CRDs '
        'carry cluster.x-k8s.io/v1beta2, so want v1beta2',
    ],
    # bootstrap metadata.yaml: unknown key, string minor, clusterAPIVersion instead of contract.
    'bad-metadata-shape': [
        "bootstrap-capwin/v0.1.0/metadata.yaml: unknown key 'provider' (clusterctl >= 1.11 decodes "
        "metadata.yaml strictly)",
        "bootstrap-capwin/v0.1.0/metadata.yaml: releaseSeries[0]: minor is '1'; want a non-negative "
        "integer",
        "bootstrap-capwin/v0.1.0/metadata.yaml: releaseSeries[1]: unknown key 'clusterAPIVersion'",
        'bootstrap-capwin/v0.1.0/metadata.yaml: releaseSeries[1]: contract missing',
        'bootstrap-capwin/v0.1.0/metadata.yaml: releaseSeries has no valid entry for 0.1 (the series '
        'of v0.1.0); clusterctl refuses the release',
    ],
    # bootstrap-components.yaml written as components.yaml.
    'bad-missing-components': [
        'layout: bootstrap-capwin/v0.1.0/components.yaml: unexpected; clusterctl reads '
        'bootstrap-components.yaml, metadata.yaml here',
        'bootstrap-capwin/v0.1.0/bootstrap-components.yaml missing',
    ],
    # infrastructure-components.yaml with a second Namespace.
    'bad-two-namespaces': [
        'infrastructure-capwin/v0.1.0/infrastructure-components.yaml: namespace: 2 Namespace objects '
        '(capwin-infrastructure-system, capwin-extra); clusterctl needs exactly one',
        'infrastructure-capwin/v0.1.0/infrastructure-components.yaml: Namespace/capwin-extra is not in '
        'fixtures/good-infrastructure-components.yaml',
    ],
    # a template copied into the bootstrap provider's folder too.
    'bad-template-placement': [
        'templates: bootstrap-capwin/v0.1.0/cluster-template-demo.yaml: templates belong in '
        'infrastructure-capwin/v0.1.0/ only',
    ],
    # bootstrap image tag left at dev; infrastructure memory limit changed.
    'bad-image-and-drift': [
        'bootstrap-capwin/v0.1.0/bootstrap-components.yaml: image: '
        'Deployment/capwin-bootstrap-controller-manager container manager: '
        '${CAPWIN_IMAGE:=ghcr.io/capwin/capwin:dev} has tag dev; want v0.1.0',
        'infrastructure-capwin/v0.1.0/infrastructure-components.yaml: '
        'Deployment/capwin-infrastructure-controller-manager differs from '
        'fixtures/good-infrastructure-components.yaml (image tags aside) at '
        "spec.template.spec.containers[0].resources.limits.memory: '256Mi' there, '512Mi' here",
    ],
    # demo template edited (two malformed variables), other template missing, an unknown extra one.
    'bad-template-drift': [
        'templates: infrastructure-capwin/v0.1.0/cluster-template-demo.yaml differs from '
        'test/config/fixtures/release/templates/cluster-template-demo.yaml',
        'templates: infrastructure-capwin/v0.1.0/cluster-template-demo.yaml: variables: '
        '${NAMESPACE:-default} must look like ${NAME} or ${NAME:=default} with NAME in [A-Z0-9_]',
        'templates: infrastructure-capwin/v0.1.0/cluster-template-demo.yaml: variables: '
        '${cluster_name} must look like ${NAME} or ${NAME:=default} with NAME in [A-Z0-9_]',
        'templates: infrastructure-capwin/v0.1.0/cluster-template-demo.yaml: variables: '
        '${cluster_name} must look like ${NAME} or ${NAME:=default} with NAME in [A-Z0-9_]',
        'templates: infrastructure-capwin/v0.1.0/cluster-template-extra.yaml is not in '
        'test/config/fixtures/release/templates/',
        'templates: cluster-template-other.yaml of test/config/fixtures/release/templates/ is missing',
    ],
    # a README.md beside the providers; the infrastructure version folder named 0.1.0.
    'bad-layout': [
        'layout: README.md: unexpected; a capwin release holds only bootstrap-capwin and '
        'infrastructure-capwin',
        'layout: infrastructure-capwin/0.1.0: unexpected; want only the version folder v0.1.0',
        'layout: infrastructure-capwin/v0.1.0 missing',
        'infrastructure-capwin/v0.1.0/metadata.yaml not checked: no infrastructure-capwin/v0.1.0',
        'infrastructure-capwin/v0.1.0/infrastructure-components.yaml not checked: no '
        'infrastructure-capwin/v0.1.0',
        'templates: not checked: no infrastructure-capwin/v0.1.0',
    ],
}


def release_fixture_problems(name):
    reference = {'bootstrap': ('fixtures/good-components.yaml', fixture('good-components.yaml')),
                 'infrastructure': ('fixtures/good-infrastructure-components.yaml',
                                    fixture('good-infrastructure-components.yaml'))}
    checks = release_checks(os.path.join(RELEASE_FIXTURES, name), RELEASE_FIXTURE_VERSION, reference,
                            os.path.join(RELEASE_FIXTURES, 'templates'))
    return [x for _, problems in checks for x in problems]


def expect_exactly(got, expected):
    missing, extra = list(expected), []
    for g in got:
        if g in missing:
            missing.remove(g)
        else:
            extra.append(g)
    assert not missing and not extra, 'missing:\n  %s\nunexpected:\n  %s' % (
        '\n  '.join(missing) or '-', '\n  '.join(extra) or '-')


def release_self_test_cases():
    cases = []

    def good_infrastructure():
        expect_clean(components_problems(fixture('good-infrastructure-components.yaml'),
                                         PROVIDERS['infrastructure']))
    cases.append(('selftest: good-infrastructure-components.yaml has no problems (infrastructure rules)',
                  good_infrastructure))

    def good_release():
        expect_clean(release_fixture_problems('good'))
    cases.append(('selftest: release/good passes every release check', good_release))

    def all_fixtures_listed():
        dirs = set(os.listdir(RELEASE_FIXTURES)) - {'good', 'templates'}
        assert dirs == set(RELEASE_FIXTURE_EXPECTATIONS), 'release fixtures %s, expectations for %s' % (
            sorted(dirs), sorted(RELEASE_FIXTURE_EXPECTATIONS))
    cases.append(('selftest: every release/ fixture has its expected problems', all_fixtures_listed))

    for name, expected in RELEASE_FIXTURE_EXPECTATIONS.items():
        def bad(name=name, expected=expected):
            expect_exactly(release_fixture_problems(name), expected)
        cases.append(('selftest: release/%s gives exactly its %d problems' % (name, len(expected)), bad))

    def metadata_rules():
        head = 'apiVersion: %s\nkind: Metadata\n' % METADATA_API_VERSION
        ok = head + 'releaseSeries:\n- {major: 0, minor: 1, contract: v1beta1}\n' \
                    '- {major: 1, minor: 2, contract: v1beta2}\n'
        expect_clean(metadata_problems(ok, 'v1.2.0-rc.1+build.5'))
        expect_clean(metadata_problems(ok + 'metadata: {name: capwin}\n', 'v1.2.3'))
        for text, version, want in (
                (ok, 'v0.1.0', 'the 0.1 series has contract v1beta1'),
                (ok, 'v1.3.0', 'no valid entry for 1.3'),
                (head + 'kind: Metadata\nreleaseSeries: []\n', 'v0.1.0', 'duplicate key'),
                (head + 'releaseSeries: []\n', 'v0.1.0', 'want a non-empty list'),
                (head + 'releaseSeries:\n- {major: true, minor: 1, contract: v1beta2}\n', 'v1.1.0',
                 'major is True; want a non-negative integer'),
                (head + 'releaseSeries:\n- {major: 0, minor: 1, contract: v1beta2}\n'
                        '- {major: 0, minor: 1, contract: v1beta2}\n', 'v0.1.0', '2 entries for 0.1'),
                (ok + '---\n' + ok, 'v1.2.0', 'found 2 document(s)'),
                (ok.replace('v1alpha3', 'v1alpha2'), 'v1.2.0',
                 "apiVersion is 'clusterctl.cluster.x-k8s.io/v1alpha2'"),
                (ok.replace('contract: v1beta2', 'contract: 1beta2'), 'v1.2.0', "contract is '1beta2'")):
            got = metadata_problems(text, version)
            assert any(want in g for g in got), 'want %r for %r (%s), got %s' % (want, text, version, got)
    cases.append(('selftest: metadata.yaml rules (duplicate keys, bools, pre-releases, documents)',
                  metadata_rules))

    def release_usage():
        for args in (['--release', RELEASE_FIXTURES], ['--release', RELEASE_FIXTURES, '--version', '0.1.0'],
                     ['--version', 'v0.1.0']):
            p = subprocess.run([sys.executable, os.path.abspath(__file__), *args],
                               capture_output=True, text=True)
            assert p.returncode == 2 and '--version' in p.stderr, (args, p.returncode, p.stderr)
    cases.append(('selftest: --release needs --version vX.Y.Z (usage errors exit 2)', release_usage))
    return cases


def self_test_cases():
    spec = PROVIDERS['bootstrap']
    cases = []

    def good_fixture():
        expect_clean(components_problems(fixture('good-components.yaml'), spec))
    cases.append(('selftest: good fixture has no problems', good_fixture))

    for name, expected in FIXTURE_EXPECTATIONS.items():
        def bad(name=name, expected=expected):
            got = components_problems(fixture(name), spec)
            missing = [e for e in expected if e not in got]
            extra = [g for g in got if g not in expected]
            assert not missing and not extra, 'missing:\n  %s\nunexpected:\n  %s' % (
                '\n  '.join(missing) or '-', '\n  '.join(extra) or '-')
        cases.append(('selftest: %s gives exactly its %d problems' % (name, len(expected)), bad))

    def schema_failure():
        rc, out = validate(fixture('bad-schema.yaml'), '--default-vars')
        assert rc == 1, 'validate.py accepted a Deployment with replicas: "one" (rc=%d)\n%s' % (rc, out)
        assert 'Deployment/capwin-bootstrap-controller-manager: spec.replicas: invalid type' in out, out
        rc, out = validate(fixture('good-components.yaml'), '--default-vars')
        assert rc == 0, out
    cases.append(('selftest: validate.py rejects bad-schema.yaml, accepts the good fixture', schema_failure))

    def kubectl_missing():
        env = dict(os.environ, PATH=os.path.join(HERE, 'no-such-dir'))
        p = subprocess.run([sys.executable, os.path.abspath(__file__), '--no-self-test'],
                           capture_output=True, text=True, env=env)
        assert p.returncode == 2 and 'kubectl not found in PATH' in p.stderr, (p.returncode, p.stderr)
        assert 'config checks: 0 passed, 1 failed' in p.stdout, p.stdout
    cases.append(('selftest: a missing kubectl fails clearly (exit 2)', kubectl_missing))

    def dockerignore_rules():
        pats = dockerignore_patterns('target\n**/target\n.git\n/out\n**/*.pyc\ncrds/*.yaml\n!crds/keep.yaml\n')
        for path, want in (('target/release/capwin', True), ('controllers/api/target/x', True),
                           ('.git/HEAD', True), ('out/x', True), ('test/out/x', False),
                           ('a/b/c.pyc', True), ('crds/a.yaml', True), ('crds/keep.yaml', False),
                           ('targets/x', False), ('controllers/payload/ps/bootstrap.ps1', False)):
            assert dockerignored(pats, path) == want, (path, want)
    cases.append(('selftest: .dockerignore matcher (*, **, /, !, parent folders)', dockerignore_rules))

    def plural_and_bind_rules():
        assert pluralize('WindowsKubeadmConfig') == 'windowskubeadmconfigs'
        assert pluralize('AzureClusterIdentity') == 'azureclusteridentities'
        assert pluralize('Gateway') == 'gateways' and pluralize('Box') == 'boxes'
        assert bind_address_problem('--x', '0.0.0.0:9440') is None
        assert bind_address_problem('--x', '[::]:9440') is None
        assert bind_address_problem('--x', '0') is None
        assert bind_address_problem('--x', ':8443') is None
        assert bind_address_problem('--x', 'localhost:1') and bind_address_problem('--x', ':http')
    cases.append(('selftest: CRD plurals, bind addresses', plural_and_bind_rules))
    return cases + release_self_test_cases()


def render_case(rendered, key, root):
    """A case rendering `root` into rendered[key]."""
    def fn():
        rendered[key] = render(root)
        assert load_docs(rendered[key]), '%s rendered nothing' % root
    return ('render %s' % root, fn)


def repo_cases():
    cases = []
    rendered = {}
    for key, p in PROVIDERS.items():
        cases.append(render_case(rendered, key, p['root']))
    cases.append(render_case(rendered, 'crd', 'config/crd'))

    def need(*keys):
        missing = [k for k in keys if k not in rendered]
        assert not missing, 'not rendered: %s' % ', '.join(missing)

    for key, p in PROVIDERS.items():
        def rules(key=key, p=p):
            need(key)
            expect_clean(components_problems(rendered[key], p))
        cases.append(('%s: clusterctl rules, Deployment, RBAC table, variables' % p['label'], rules))

    def crds_split_and_unchanged():
        need('bootstrap', 'infrastructure', 'crd')
        sources = {}
        problems = []
        # crds/<provider>/: the generated CRD files and their kustomization.yaml.
        for f in sorted(glob.glob(os.path.join(REPO, 'crds', '*', '*.yaml'))):
            if os.path.basename(f) == 'kustomization.yaml':
                continue
            for d in load_docs(open(f, encoding='utf-8').read()):
                sources[d['metadata']['name']] = d
                folder = os.path.basename(os.path.dirname(f))
                if d['spec']['group'] != PROVIDERS.get(folder, {}).get('crd_group'):
                    problems.append('%s: group %s does not belong in crds/%s/' % (
                        os.path.relpath(f, REPO), d['spec']['group'], folder))
        for key in ('bootstrap', 'infrastructure', 'crd'):
            crds = {d['metadata']['name']: d for d in load_docs(rendered[key])
                    if d.get('kind') == 'CustomResourceDefinition'}
            if key == 'crd':
                want = set(sources)
            else:
                want = {n for n in sources if sources[n]['spec']['group'] == PROVIDERS[key]['crd_group']}
            if set(crds) != want:
                problems.append('%s: CRDs %s; want %s' % (key, sorted(crds), sorted(want)))
            for name, d in crds.items():
                src = sources.get(name)
                if src is None:
                    continue
                a, b = copy.deepcopy(d), copy.deepcopy(src)
                for x in (a, b):
                    x['metadata'].get('labels', {}).pop(PROVIDER_LABEL, None)
                if a != b:
                    problems.append('%s: %s differs from crds/ beyond the provider label' % (key, name))
        expect_clean(problems)
    cases.append(('CRDs: split by group, all six, identical to crds/', crds_split_and_unchanged))

    def deployments_agree():
        need('bootstrap', 'infrastructure')
        pods = []
        for key in ('bootstrap', 'infrastructure'):
            d = next(o for o in load_docs(rendered[key]) if o.get('kind') == 'Deployment')
            t = copy.deepcopy(d['spec']['template'])
            t['metadata']['labels'].pop(PROVIDER_LABEL)
            # Only the infrastructure pod uses Azure workload identity.
            t['metadata']['labels'].pop('azure.workload.identity/use', None)
            t['spec'].pop('serviceAccountName')
            c = t['spec']['containers'][0]
            c.pop('args')
            c.pop('envFrom', None)
            pods.append(t)
        assert pods[0] == pods[1], 'the two pod templates differ beyond labels, service account, ' \
                                   'args and envFrom: keep the hardening in sync'
    cases.append(('Deployments: same pod template apart from args, envFrom, account', deployments_agree))

    for key, p in PROVIDERS.items():
        def schemas(key=key):
            need(key)
            rc, out = validate(rendered[key], '--default-vars')
            assert rc == 0, out
            rc, out = validate(rendered[key], '--vars', os.path.join(FIXTURES, 'capwin.vars'))
            assert rc == 0, out
        cases.append(('%s: validate.py --default-vars and --vars fixtures/capwin.vars' % p['label'], schemas))

    def substituted_values():
        need('bootstrap', 'infrastructure')
        sys.path.insert(0, MANIFESTS)
        sys.dont_write_bytecode = True  # leave no __pycache__ in test/manifests
        import validate as v  # test/manifests/validate.py: the same substitution it validates
        values = {}
        for line in fixture('capwin.vars').splitlines():
            if line.strip() and not line.startswith('#'):
                k, _, val = line.partition('=')
                values[k.strip()] = val
        problems = []
        for key in ('bootstrap', 'infrastructure'):
            for mode, vals in (('defaults', {}), ('capwin.vars', values)):
                docs = load_docs(v.substitute(rendered[key], vals, False, '1.34'))
                for o in docs:
                    if o.get('kind') == 'Secret':
                        for k, val in (o.get('data') or {}).items():
                            try:
                                base64.b64decode(val or '', validate=True)
                            except Exception:
                                problems.append('%s (%s): Secret %s key %s is not base64: %r' % (
                                    key, mode, o['metadata']['name'], k, val))
                    if o.get('kind') == 'Deployment':
                        img = o['spec']['template']['spec']['containers'][0]['image']
                        want = values['CAPWIN_IMAGE'] if vals else 'ghcr.io/capwin/capwin:dev'
                        if img != want or not CANONICAL_IMAGE_RE.match(img):
                            problems.append('%s (%s): image %s; want canonical %s' % (key, mode, img, want))
        expect_clean(problems)
    cases.append(('substituted: Secrets are base64, images canonical (defaults and capwin.vars)',
                  substituted_values))

    def variables_documented():
        need('bootstrap', 'infrastructure')
        used = {}
        for key in ('bootstrap', 'infrastructure'):
            used.update(variables_in(rendered[key]))
        readme = open(os.path.join(REPO, 'config', 'README.md'), encoding='utf-8').read()
        documented = {m.group(1): m.group(2) for m in
                      re.finditer(r'^\| `([A-Z0-9_]+)` \| `([^`]*)` \|', readme, re.M)}
        problems = ['%s is used but not in config/README.md\'s variable table' % n
                    for n in sorted(set(used) - set(documented))]
        problems += ['%s is documented but not used' % n for n in sorted(set(documented) - set(used))]
        problems += ['%s: README default `%s`, components `%s`' % (n, documented[n], used[n])
                     for n in sorted(set(used) & set(documented)) if documented[n] != (used[n] or '')]
        expect_clean(problems)
    cases.append(('variables: each documented in config/README.md with its default', variables_documented))

    def assembled_release():
        need('bootstrap', 'infrastructure')
        with tempfile.TemporaryDirectory(prefix='capwin-release-') as out:
            assemble_release(out, 'v0.1.0', rendered)
            reference = {k: ('kubectl kustomize %s' % PROVIDERS[k]['root'], rendered[k]) for k in PROVIDERS}
            expect_clean([x for _, ps in release_checks(out, 'v0.1.0', reference, TEMPLATES) for x in ps])
    cases.append(('release: a layout assembled from the render and templates/ passes --release',
                  assembled_release))

    def tilt_provider():
        path = os.path.join(REPO, 'tilt-provider.yaml')
        text = open(path, encoding='utf-8').read()
        assert text.startswith('-'), 'tilt-prepare reads a list only when the file starts with "-"'
        entries = yaml.safe_load(text)
        assert isinstance(entries, list) and len(entries) == 2, 'want a list of two providers'
        want = {'capwin-bootstrap': ('config/bootstrap', 'bootstrap-capwin'),
                'capwin-infrastructure': ('config/infrastructure', 'infrastructure-capwin')}
        assert sorted(e.get('name') for e in entries) == sorted(want), [e.get('name') for e in entries]
        labels = [e['config'].get('label') for e in entries]
        assert all(labels) and len(set(labels)) == 2, 'each entry needs its own label: %s' % labels
        for e in entries:
            cfg = e['config']
            for k in ('image', 'go_main', 'debug'):
                assert k not in cfg, '%s: %s makes CAPI\'s Tiltfile run go build' % (e['name'], k)
            assert cfg.get('live_reload_deps') == [], '%s: live_reload_deps must be empty' % e['name']
            folder, label = want[e['name']]
            assert cfg.get('kustomize_folder') == folder, (e['name'], cfg.get('kustomize_folder'))
            assert not cfg.get('kustomize_options'), \
                '%s: kustomize_options %s: the roots build with plain kubectl kustomize' % (
                    e['name'], cfg.get('kustomize_options'))
            ns = [d for d in load_docs(render(folder)) if d.get('kind') == 'Namespace']
            assert [(d['metadata'].get('labels') or {}).get(PROVIDER_LABEL) for d in ns] == [label], \
                '%s: tilt-prepare needs one Namespace labelled %s' % (folder, label)
    cases.append(('tilt-provider.yaml: list of two, no image/go_main, roots render', tilt_provider))

    def dockerfile():
        text = open(os.path.join(REPO, 'Dockerfile'), encoding='utf-8').read()
        lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith('#')]
        froms = [l for l in lines if l.startswith('FROM ')]
        problems = []
        if len(froms) != 2 or not re.match(r'FROM rust:(\$\{RUST_VERSION\}|1[.0-9]*)-bookworm AS builder$', froms[0]):
            problems.append('builder stage must be FROM rust:<version>-bookworm AS builder: %s' % froms)
        if not froms or froms[-1] != 'FROM gcr.io/distroless/cc-debian12:nonroot':
            problems.append('runtime stage must be gcr.io/distroless/cc-debian12:nonroot')
        if 'cargo build --release -p capwin --locked --no-default-features' not in text:
            problems.append('no `cargo build --release -p capwin --locked --no-default-features` '
                            '(the test kit, cargo feature kit, stays out of the image)')
        if not any(re.fullmatch(r'COPY --from=builder \S+ /manager', l) for l in lines):
            problems.append('the binary is not copied to /manager')
        if 'USER 65532:65532' not in lines:
            problems.append('no USER 65532:65532')
        if lines[-1] != 'ENTRYPOINT ["/manager"]':
            problems.append('last instruction must be ENTRYPOINT ["/manager"]')
        expect_clean(problems)
    cases.append(('Dockerfile: stages, build command, /manager, user, entrypoint', dockerfile))

    def dockerignore():
        pats = dockerignore_patterns(open(os.path.join(REPO, '.dockerignore'), encoding='utf-8').read())
        problems = ['%s is not ignored' % p for p in ('target/release/capwin', '.git/HEAD', 'sandbox-out/x')
                    if not dockerignored(pats, p)]
        inputs = embedded_files() + ['Cargo.toml', 'Cargo.lock']
        assert len(inputs) > 5, 'found no include_str! inputs: %s' % inputs
        problems += ['%s is a build input (include_str!) but .dockerignore drops it' % p
                     for p in inputs if dockerignored(pats, p)]
        expect_clean(problems)
    cases.append(('.dockerignore: drops target/.git/sandbox-out, keeps every embedded file', dockerignore))
    return cases


def release_mode_cases(root, version):
    """The --release cases; a generator, so the renders run before the checks use them."""
    rendered = {}
    for key, p in PROVIDERS.items():
        yield render_case(rendered, key, p['root'])
    reference = {k: ('kubectl kustomize %s' % PROVIDERS[k]['root'], t) for k, t in rendered.items()}
    for name, problems in release_checks(root, version, reference, TEMPLATES):
        yield name, (lambda problems=problems: expect_clean(problems))
    for key, p in PROVIDERS.items():
        path = os.path.join(root, p['label'], version, '%s-components.yaml' % key)
        if not os.path.isfile(path):
            continue

        def schemas(path=path):
            text = read_text(path)
            rc, out = validate(text, '--default-vars')
            assert rc == 0, out
            rc, out = validate(text, '--vars', os.path.join(FIXTURES, 'capwin.vars'))
            assert rc == 0, out
        yield ('%s: components: validate.py --default-vars and --vars fixtures/capwin.vars' % p['label'],
               schemas)


def main():
    global failed
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument('--self-test', action='store_true', help='only the fixture cases')
    g.add_argument('--no-self-test', action='store_true', help='only the real checks')
    g.add_argument('--render', metavar='DIR', help='print the rendered kustomize root and exit')
    g.add_argument('--release', metavar='DIR',
                   help='check the clusterctl local repository `capwin release --out DIR` wrote')
    ap.add_argument('--version', metavar='vX.Y.Z', help='the version of the --release')
    args = ap.parse_args()
    if args.version and not args.release:
        ap.error('--version goes with --release DIR')
    if args.release and not args.version:
        ap.error('--release needs --version vX.Y.Z')
    if args.release and not RELEASE_VERSION_RE.match(args.version):
        ap.error('--version %s is not a release version vMAJOR.MINOR.PATCH' % args.version)
    if args.render:
        try:
            sys.stdout.write(render(args.render))
        except Fatal as e:
            print('check.py: %s' % e, file=sys.stderr)
            return 2
        return 0

    if args.release:
        what, cases = 'release checks', release_mode_cases(args.release, args.version)
    else:
        what, cases = 'config checks', []
        if not args.no_self_test:
            cases += self_test_cases()
        if not args.self_test:
            cases += repo_cases()
    status = 0
    for name, fn in cases:
        try:
            run_case(name, fn)
        except Fatal as e:
            failed += 1
            print('FAIL %s: %s' % (name, e))
            print('check.py: %s' % e, file=sys.stderr)
            status = 2
            break
    print('%s: %d passed, %d failed' % (what, passed, failed))
    return status or (1 if failed else 0)


if __name__ == '__main__':
    sys.exit(main())
