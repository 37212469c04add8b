#!/usr/bin/env bash
# Self-test of the cloudbase-init oracle: runs cbi_driver.py on samples/ and
# checks exit codes and JSON reports. Exits non-zero if any expectation fails.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="$("$here/setup.sh")"

exec "$py" - "$here" <<'PYEOF'
import base64, json, os, subprocess, sys, tempfile

here = sys.argv[1]
driver = os.path.join(here, 'cbi_driver.py')
samples = os.path.join(here, 'samples')
passed, failed = 0, 0


def drive(sample, *args, stdin=None):
    src = '-' if stdin is not None else os.path.join(samples, sample)
    p = subprocess.run([sys.executable, driver, src, *args], input=stdin,
                       capture_output=True)
    try:
        report = json.loads(p.stdout)
    except ValueError:
        raise AssertionError('no JSON on stdout (rc=%d): %s'
                             % (p.returncode, p.stderr.decode()[-2000:]))
    return p.returncode, report


def case(fn):
    global passed, failed
    try:
        fn()
        passed += 1
        print('ok   %s' % fn.__name__)
    except AssertionError as e:
        failed += 1
        print('FAIL %s: %s' % (fn.__name__, e))
    return fn


def has_problem(r, needle):
    return any(needle in p for p in r['problems'])


def check_good_payload(root):
    rc, r = drive('good.yaml', '--instance-id', 'i-selftest',
                  '--hostname', 'node-a.example.com', '--root', root)
    assert rc == 0, (rc, r['problems'])
    assert r['problems'] == [], r['problems']
    assert (r['format'], r['template'], r['gzip']) == \
        ('cloud-config', 'jinja', False), r
    assert (r['plugin_status'], r['reboot']) == ('EXECUTION_DONE', False), r
    files = [(f['path'], f.get('text'), f['append']) for f in r['files']]
    assert files == [
        ('C:\\k\\instance-id.txt', 'i-selftest', False),
        ('C:\\k\\kubeadm-config.yaml', 'kubeconfig: b64\n', False),
        ('C:\\k\\service.ini', '[Service]\nmode = gzip+base64\n', False),
        ('C:\\k\\raw-gzip.txt', 'raw gzip via !!binary\n', False),
        ('C:\\k\\instance-id.txt', '\nappended\n', True),
        ('C:\\Users\\capi\\.ssh\\authorized_keys',
         'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOracleSelftestKey '
         'capi@mgmt\r\n', False),
    ], files
    assert all(f['permissions'] == '0644' for f in r['files'][:5])
    with open(os.path.join(root, 'C', 'k', 'instance-id.txt')) as f:
        on_disk = f.read()
    assert on_disk == 'i-selftest\nappended\n', on_disk
    assert r['commands'] == [{
        'kind': 'cmd', 'shell': True,
        'script': 'rem cmd\r\n'
                  'echo bootstrap node-a.example.com > C:\\k\\bootstrap.log\r\n'
                  'powershell.exe -NoProfile -File C:\\k\\join.ps1\r\n',
    }], r['commands']
    assert [(u['name'], u['groups'], u['ssh_authorized_keys'])
            for u in r['users']] == [
        ('capi', ['Administrators', 'capwin-admins'],
         ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOracleSelftestKey capi@mgmt'])
    ], r['users']
    assert {g['name']: g['created'] for g in r['groups']} == \
        {'capwin-admins': True, 'Administrators': False}, r['groups']
    assert r['ntp'] == ['169.254.169.123'], r['ntp']
    names = [c['name'] for c in r['calls']]
    for n in ('set_ntp_client_config', 'create_group', 'create_user',
              'add_user_to_local_group', 'get_user_home', 'execute_process'):
        assert n in names, (n, names)


@case
def good_payload():
    with tempfile.TemporaryDirectory(prefix='cbi-selftest-') as root:
        check_good_payload(root)


@case
def bootcmd_is_an_error():
    rc, r = drive('bootcmd.yaml')
    assert rc == 2, rc
    assert has_problem(r, "'bootcmd' is currently not supported"), r['problems']
    assert [c['script'] for c in r['commands']] == \
        ['rem cmd\r\necho still runs\r\n'], r['commands']


@case
def missing_permissions_is_a_warning():
    rc, r = drive('no-permissions.yaml')
    assert rc == 2, rc
    assert has_problem(r, 'Fail to process permissions None'), r['problems']
    assert [(f['path'], f['permissions']) for f in r['files']] == \
        [('C:\\k\\no-perm.txt', '0644')], r['files']
    rc, r = drive('no-permissions.yaml', '--allow-warnings')
    assert rc == 0, rc


@case
def whole_payload_gzip():
    rc, r = drive('gzip-whole.yaml.gz')
    assert rc == 0, (rc, r['problems'])
    assert (r['gzip'], r['format']) == (True, 'cloud-config'), r
    assert [(f['path'], f['text']) for f in r['files']] == \
        [('C:\\k\\from-gzip.txt', 'whole payload was gzip')], r['files']
    assert [c['script'] for c in r['commands']] == \
        ['rem cmd\r\necho gzip ok\r\n'], r['commands']


@case
def whole_payload_gzip_as_base64_on_stdin():
    with open(os.path.join(samples, 'gzip-whole.yaml.gz'), 'rb') as f:
        b64 = base64.encodebytes(f.read())  # 76-column lines, like EC2 tools
    rc, r = drive(None, '--b64', stdin=b64)
    assert rc == 0 and r['gzip'] and len(r['files']) == 1, (rc, r)


@case
def undefined_jinja_variable_is_an_error():
    rc, r = drive('missing-var.yaml')
    assert rc == 2, rc
    assert has_problem(r, 'commands[0]: CI_MISSING_JINJA_VAR/no_such_key'), \
        r['problems']


@case
def powershell_payload():
    rc, r = drive('script.ps1')
    assert rc == 0, (rc, r['problems'])
    assert r['format'] == 'ps1', r['format']
    assert r['commands'] == [{
        'kind': 'powershell', 'sysnative': True,
        'script': '#ps1_sysnative\r\nWrite-Host "capwin ps1 payload"\r\n'}], \
        r['commands']


print('selftest: %d passed, %d failed' % (passed, failed))
sys.exit(1 if failed else 0)
PYEOF
