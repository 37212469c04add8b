#!/usr/bin/env python3
"""Checks capwin's clusterctl packaging: config/ (two providers), tilt-provider.yaml, Dockerfile.

Renders config/bootstrap, config/infrastructure and config/crd with
`kubectl kustomize --load-restrictor=LoadRestrictionsNone`, then checks each provider's components
stream against the clusterctl rules (one Namespace, everything in it, provider label, CRD names and
contract labels, one Deployment with a container named `manager`, probes, resources, the restricted
security context, no RBAC wildcards, permissions exactly as documented, `${CAPWIN_...}` variables
only, all documented in config/README.md), validates the output against real schemas with
test/manifests/validate.py, and checks tilt-provider.yaml, the Dockerfile and .dockerignore
statically. A self-test runs the same checks on test/config/fixtures/, where each bad fixture must
give exactly the expected problems.

    check.py                 self-test, then the real checks
    check.py --self-test     fixtures only
    check.py --no-self-test  the real checks only
    check.py --render DIR    print the rendered kustomize root (what the checks see)

Ends with `config checks: N passed, M failed`; exit 1 on any failure, 2 when kubectl is missing.
Run it with the manifests venv python (test/config/check.sh does).
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

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(HERE, 'fixtures')
MANIFESTS = os.path.join(REPO, 'test', 'manifests')
VALIDATE = os.path.join(MANIFESTS, 'validate.py')
KUSTOMIZE_FLAGS = ['--load-restrictor=LoadRestrictionsNone']

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
        },
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
            (C, 'clusters'): 'get list watch',
            (C, 'machines'): 'get list watch',
            ('', 'secrets'): 'get list watch',
            **EVENTS,
        },
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
    """`kubectl kustomize --load-restrictor=LoadRestrictionsNone ROOT` (ROOT relative to the repo)."""
    kubectl = shutil.which('kubectl')
    if not kubectl:
        raise Fatal('kubectl not found in PATH: it renders the kustomize roots '
                    '(kubectl kustomize, kustomize v5 built in); install kubectl >= 1.27')
    p = subprocess.run([kubectl, 'kustomize', *KUSTOMIZE_FLAGS, os.path.join(REPO, root)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError('kubectl kustomize %s %s failed (rc=%d):\n%s' % (
            ' '.join(KUSTOMIZE_FLAGS), root, p.returncode, p.stderr.strip()))
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


def variable_problems(text):
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
        if not name.startswith(VARIABLE_PREFIX) and name not in STANDARD_VARIABLES:
            out.append('variables: ${%s} does not start with %s' % (name, VARIABLE_PREFIX))
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
        ipaddress.ip_address(host.strip('[]'))
        ok = sep and port.isdigit()
    except ValueError:
        ok = False
    if not ok:
        return ('deployment: %s=%s: capwin parses it as a Rust SocketAddr, which needs an IP '
                '(e.g. 0.0.0.0:9440), or "0" to disable' % (flag, value))
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

    env = {e.get('name'): e for e in c.get('env') or []}
    for var, path in (('POD_NAME', 'metadata.name'), ('POD_NAMESPACE', 'metadata.namespace')):
        got = (((env.get(var) or {}).get('valueFrom') or {}).get('fieldRef') or {}).get('fieldPath')
        if got != path:
            out.append('deployment: env %s must come from the downward API (%s)' % (var, path))
    ports = {p.get('name'): p.get('containerPort') for p in c.get('ports') or []}
    if str(ports.get('healthz')) != probe_port:
        out.append('deployment: port "healthz" is %s; the health probe listens on %s' % (
            ports.get('healthz'), probe_port))
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

    # RBAC: no wildcards anywhere; bindings resolve; permissions exactly as documented.
    roles = {(o['kind'], o['metadata']['name']): o for o in docs if o.get('kind') in ('Role', 'ClusterRole')}
    sas = {o['metadata']['name'] for o in docs if o.get('kind') == 'ServiceAccount'
           and o['metadata'].get('namespace') == ns}
    granted = {'ClusterRole': {}, 'Role': {}}
    for (kind, name), role in sorted(roles.items()):
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
        'deployment: --health-probe-bind-address=:9440: capwin parses it as a Rust SocketAddr, '
        'which needs an IP (e.g. 0.0.0.0:9440), or "0" to disable',
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
        assert bind_address_problem('--x', ':9440') and bind_address_problem('--x', 'localhost:1')
    cases.append(('selftest: CRD plurals, bind addresses', plural_and_bind_rules))
    return cases


def repo_cases():
    cases = []
    rendered = {}

    def do_render(key, root):
        def fn():
            rendered[key] = render(root)
            assert load_docs(rendered[key]), '%s rendered nothing' % root
        return fn
    for key, p in PROVIDERS.items():
        cases.append(('render %s' % p['root'], do_render(key, p['root'])))
    cases.append(('render config/crd', do_render('crd', 'config/crd')))

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
        for f in sorted(glob.glob(os.path.join(REPO, 'crds', '*.yaml'))):
            for d in load_docs(open(f, encoding='utf-8').read()):
                sources[d['metadata']['name']] = d
        problems = []
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
            assert cfg.get('kustomize_options') == KUSTOMIZE_FLAGS, (e['name'], cfg.get('kustomize_options'))
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
        if 'cargo build --release -p capwin --locked' not in text:
            problems.append('no `cargo build --release -p capwin --locked`')
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


def main():
    global failed
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument('--self-test', action='store_true', help='only the fixture cases')
    g.add_argument('--no-self-test', action='store_true', help='only the real checks')
    g.add_argument('--render', metavar='DIR', help='print the rendered kustomize root and exit')
    args = ap.parse_args()
    if args.render:
        try:
            sys.stdout.write(render(args.render))
        except Fatal as e:
            print('check.py: %s' % e, file=sys.stderr)
            return 2
        return 0

    cases = []
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
    print('config checks: %d passed, %d failed' % (passed, failed))
    return status or (1 if failed else 0)


if __name__ == '__main__':
    sys.exit(main())
