#!/usr/bin/env bash
# Self-test of the manifest validator: runs validate.py on fixtures/ (each bad fixture must give
# exactly the expected lines, each good one none), then on the manifests capwin ships
# (config/samples/*.yaml, crds/*/*.yaml, and templates/*.yaml with --default-vars once they exist).
# Exits non-zero if any expectation fails.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="$("$here/setup.sh")"

exec "$py" - "$here" <<'PYEOF'
import glob, os, re, subprocess, sys

here = sys.argv[1]
repo = os.path.dirname(os.path.dirname(here))
validate = os.path.join(here, 'validate.py')
passed, failed = 0, 0


def run(*args):
    """validate.py from test/manifests (so paths print as fixtures/...): (rc, lines, summary)."""
    p = subprocess.run([sys.executable, validate, *args], cwd=here, capture_output=True, text=True)
    out = p.stdout.splitlines()
    assert out and out[-1].startswith('manifests: '), \
        'no summary line (rc=%d): %s %s' % (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    return p.returncode, out[:-1], out[-1], p.stderr


def expect_ok(*args):
    rc, lines, summary, err = run(*args)
    assert rc == 0 and lines == [], 'rc=%d\n%s\n%s%s' % (rc, '\n'.join(lines), summary, err)
    assert ', 0 errors' in summary, summary
    return summary


def expect_errors(args, expected):
    """The problem lines must be exactly `expected` (order-insensitive), exit code 1."""
    rc, lines, summary, err = run(*args)
    missing = [l for l in expected if l not in lines]
    extra = [l for l in lines if l not in expected]
    assert rc == 1 and not missing and not extra, \
        'rc=%d\nmissing:\n  %s\nunexpected:\n  %s\n%s' % (
            rc, '\n  '.join(missing), '\n  '.join(extra), err)
    assert ', %d errors' % len(expected) in summary, summary
    return lines


class SkipCase(Exception):
    pass


def case(fn):
    global passed, failed
    try:
        fn()
        passed += 1
        print('ok   %s' % fn.__name__)
    except SkipCase as e:
        print('skip %s: %s' % (fn.__name__, e))
    except AssertionError as e:
        failed += 1
        print('FAIL %s: %s' % (fn.__name__, e))
    return fn


WKC = 'fixtures/%s.yaml#0 WindowsKubeadmConfig/%s: '


# --- what the brief asks for --------------------------------------------------------------

@case
def cr_wrong_type():
    expect_errors(['fixtures/bad-cr-wrong-type.yaml'], [
        WKC % ('bad-cr-wrong-type', 'bad-type')
        + 'spec.verbosity: invalid type: got string "x", want integer'])


@case
def cr_enum_violation():
    expect_errors(['fixtures/bad-cr-enum.yaml'], [
        WKC % ('bad-cr-enum', 'bad-enum') + 'spec.windows.cni.flavour: unsupported value '
        '"calico"; supported values: "calico-vxlan", "flannel-vxlan", "flannel-host-gw", "none"'])


@case
def cr_unknown_field():
    expect_errors(['fixtures/bad-cr-unknown-field.yaml'], [
        WKC % ('bad-cr-unknown-field', 'bad-unknown') + 'spec.windows.node.osTaints: unknown '
        'field "osTaints" (dropped silently unless the client asks for strict field validation); '
        'did you mean "osTaint"?'])


@case
def deployment_bad_fields():
    head = 'fixtures/bad-deployment.yaml#0 Deployment/bad-replicas: '
    expect_errors(['fixtures/bad-deployment.yaml'], [
        head + 'spec.replicas: invalid type: got string "one", want integer',
        head + 'spec.template.spec.containers[0].imagePulPolicy: unknown field "imagePulPolicy" '
        '(dropped silently unless the client asks for strict field validation); '
        'did you mean "imagePullPolicy"?'])


@case
def unknown_kind():
    expect_errors(['fixtures/bad-unknown-kind.yaml'], [
        'fixtures/bad-unknown-kind.yaml#0 WindowsKubeadmConfigg/typo-kind: kind: unknown kind '
        '"WindowsKubeadmConfigg" in "bootstrap.cluster.x-k8s.io/v1alpha1": not a built-in kind of '
        'Kubernetes 1.34 and no CRD defines it; did you mean "WindowsKubeadmConfig"?'])


@case
def good_windowskubeadmconfig():
    summary = expect_ok('fixtures/good-windowskubeadmconfig.yaml')
    assert 'CEL rules not evaluated' in summary, summary


@case
def good_capi_cluster():
    expect_ok('fixtures/good-cluster.yaml')


@case
def good_configmap_with_empty_documents():
    summary = expect_ok('fixtures/good-configmap.yaml')
    assert summary.startswith('manifests: 1 documents in 1 files'), summary


@case
def shipped_samples():
    files = sorted(glob.glob(os.path.join(repo, 'config', 'samples', '*.yaml')))
    assert files, 'no config/samples/*.yaml'
    expect_ok(*files)


# --- more of the real thing -----------------------------------------------------------------

@case
def shipped_crds_are_valid_crds():
    files = sorted(f for f in glob.glob(os.path.join(repo, 'crds', '*', '*.yaml'))
                   if os.path.basename(f) != 'kustomization.yaml')
    assert files, 'no crds/*/*.yaml'
    summary = expect_ok(*files)
    assert 'manifests: %d documents' % len(files) in summary, summary


@case
def shipped_templates_with_default_vars():
    files = sorted(glob.glob(os.path.join(repo, 'templates', '*.yaml')))
    if not files:
        raise SkipCase('no templates/*.yaml yet')
    expect_ok('--default-vars', *files)


@case
def multidoc_missing_fields_duplicates_unserved_version_yaml11():
    f = 'fixtures/bad-multidoc.yaml#'
    expect_errors(['fixtures/bad-multidoc.yaml'], [
        f + '2 ConfigMap/no-api-version: apiVersion: required field is missing',
        f + '3 ?/no-kind: kind: required field is missing',
        f + '4 ConfigMap/dup-key: (line 23): duplicate key "a" (the last one silently wins)',
        f + '5 AWSCluster/old-api: apiVersion: version v1beta1 of AWSCluster is not served by CRD '
            'awsclusters.infrastructure.cluster.x-k8s.io (served: v1beta2)',
        f + '6 ConfigMap/yaml-bool: data.debug: invalid type: got boolean true, want string'])


@case
def yaml_syntax_and_non_objects():
    rc, lines, summary, _ = run('fixtures/bad-yaml.yaml', 'fixtures/does-not-exist.yaml')
    assert rc == 1, rc
    assert lines[0] == 'fixtures/bad-yaml.yaml#1 -: (root): document is an array, not a ' \
                       'Kubernetes object', lines
    assert lines[1].startswith('fixtures/bad-yaml.yaml#2 -: (yaml): line 14 column 1: '), lines
    assert lines[2].startswith('fixtures/does-not-exist.yaml#0 -: (file): cannot read: '), lines
    assert len(lines) == 3, lines


@case
def standard_input():
    p = subprocess.run([sys.executable, validate, '-'], cwd=here, capture_output=True, text=True,
                       input=open(os.path.join(here, 'fixtures', 'bad-cr-enum.yaml')).read())
    assert p.returncode == 1 and p.stdout.startswith(
        '-#0 WindowsKubeadmConfig/bad-enum: spec.windows.cni.flavour: unsupported value'), p.stdout


@case
def structural_schema_features():
    # nullable, int-or-string, preserve-unknown-fields, embedded-resource, list-type set/map,
    # additionalProperties maps, defaults satisfying `required`, exclusiveMinimum.
    expect_ok('--crds', 'fixtures/crds', 'fixtures/good-widget.yaml')
    w = 'fixtures/bad-widget.yaml#%d Widget/%s: '
    expect_errors(['--crds', 'fixtures/crds', 'fixtures/bad-widget.yaml'], [
        w % (0, 'null-in-non-nullable') + 'spec.settings: invalid type: got null, want object',
        w % (1, 'int-or-string') + 'spec.size: invalid type: got boolean true, want integer or string',
        w % (2, 'exclusive-minimum') + 'spec.ratio: 0: must be greater than 0',
        w % (3, 'embedded-no-kind') + 'spec.template.kind: required field is missing',
        w % (3, 'embedded-no-kind') + 'spec.template.metadata.bogus: unknown field "bogus" '
                                      '(dropped silently unless the client asks for strict field validation)',
        w % (4, 'duplicate-set-entry') + 'spec.tags: duplicate entry "a" (x-kubernetes-list-type: set)',
        w % (5, 'duplicate-map-key') + 'spec.ports: duplicate entry with name="http" '
                                       '(x-kubernetes-list-type: map)',
        w % (6, 'name-longer-than-twenty') + 'metadata.name: must be at most 20 characters long (is 23)',
        w % (6, 'name-longer-than-twenty') + 'spec.settings.a: invalid type: got integer 1, want string',
        w % (7, 'not-served') + 'apiVersion: version v1 of Widget is not served by CRD '
                                'widgets.selftest.capwin.example.com (served: v2)',
        w % (8, 'Bad_Name') + 'spec.size: "5" does not match pattern "^[0-9]+%$"',
        w % (8, 'Bad_Name') + 'metadata.name: "Bad_Name": a custom resource name must be a '
                              'lower-case RFC 1123 subdomain (at most 253 characters)',
        w % (8, 'Bad_Name') + 'metadata.namespace: "Default": must be a lower-case RFC 1123 label '
                              '(at most 63 characters)',
        w % (8, 'Bad_Name') + 'metadata.labels["-bad"]: invalid label key: name part "-bad" must be '
                              'at most 63 characters of alphanumerics, "-", "_" or ".", starting and '
                              'ending with an alphanumeric',
        w % (8, 'Bad_Name') + 'metadata.labels.good: invalid label value "not ok!": at most 63 '
                              'characters of alphanumerics, "-", "_" or ".", starting and ending with '
                              'an alphanumeric'])


@case
def crd_in_the_input_defines_its_kind():
    # kustomize output ships CRDs and CRs together: no --crds needed for them.
    expect_ok('fixtures/crds/selftest.capwin.example.com_widgets.yaml', 'fixtures/good-widget.yaml')


@case
def cel_rules_are_listed_not_evaluated():
    rc, lines, summary, _ = run('-v', 'fixtures/good-windowskubeadmconfig.yaml')
    assert rc == 0, (rc, lines)
    cel = [l for l in lines if ': CEL rule not evaluated: ' in l]
    assert any(l.endswith("spec.windows.containerd: CEL rule not evaluated: !has(self.download) || "
                          "self.source == 'Download' (download is only allowed with source Download)")
               for l in cel), cel
    assert '(%d CEL rules not evaluated)' % len(cel) in summary, (summary, len(cel))


@case
def template_variables():
    t = 'fixtures/template-vars.yaml'
    rc, lines, _, err = run(t)  # no substitution: ${...} is literal text and fails
    assert rc == 1 and any('spec.replicas: invalid type: got string '
                           '"${WINDOWS_WORKER_MACHINE_COUNT}", want integer' in l for l in lines), lines
    assert 'pass --default-vars or --vars FILE' in err, err
    expect_ok('--default-vars', t)
    head = t + '#0 MachineDeployment/demo-win: spec.replicas: '
    expect_errors(['--vars', 'fixtures/template.vars', t], [
        head + 'variable ${WINDOWS_WORKER_MACHINE_COUNT} has no value (give it in --vars FILE, '
               'or use --default-vars)',
        head + 'invalid type: got string "${WINDOWS_WORKER_MACHINE_COUNT}", want integer'])
    expect_ok('--vars', 'fixtures/template.vars', '--default-vars', t)


@case
def substitution_rules():
    sys.path.insert(0, here)
    import validate as v
    sub = lambda text, vals={}, ph=True: v.substitute(text, vals, ph, '1.34')
    assert sub('${A_COUNT} ${B_REPLICAS} ${KUBERNETES_VERSION} ${X}') == '1 1 v1.34.0 placeholder'
    assert sub('${A:=d} ${A:-d} ${A=d} ${A-d}', {'A': ''}) == 'd d  ', sub('${A:=d}', {'A': ''})
    assert sub('${A:=d} ${A}', {'A': 'v'}) == 'v v'
    assert sub('${SECRET_B64}') == 'cGxhY2Vob2xkZXI='
    assert sub('${X}', ph=False) == '${X}'
    assert sub('${env:PATH} $X') == '${env:PATH} $X'  # not clusterctl variables


@case
def kubernetes_version_selects_schemas():
    f = 'fixtures/flowschema-v1beta3.yaml'
    expect_ok('--k8s-version', '1.29', f)
    expect_errors([f], [
        f + '#0 FlowSchema/capwin-selftest: apiVersion: flowcontrol.apiserver.k8s.io/v1beta3 '
            'FlowSchema is not served by Kubernetes 1.34 (available: flowcontrol.apiserver.k8s.io/v1)'])


@case
def usage_errors_exit_2():
    for args in (['--k8s-version', '1.20', 'fixtures/good-configmap.yaml'],
                 ['--crds', 'fixtures/no-such-dir', 'fixtures/good-configmap.yaml']):
        p = subprocess.run([sys.executable, validate, *args], cwd=here, capture_output=True,
                           text=True)
        assert p.returncode == 2 and 'validate.py: error: ' in p.stderr, (args, p.returncode, p.stderr)


print('manifests selftest: %d passed, %d failed' % (passed, failed))
sys.exit(1 if failed else 0)
PYEOF
