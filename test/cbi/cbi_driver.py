#!/usr/bin/env python3
"""Feed a user-data payload through cloudbase-init's own UserDataPlugin.

Usage: cbi_driver.py PAYLOAD_FILE [--b64] [--hostname H] [--instance-id I]
                     [--node-name N] [--root DIR] [--allow-warnings]

Runs the upstream parsing code (cloudbase-init 1.1.9, see requirements.txt)
on Linux with the Windows OS layer replaced by a recorder, and prints one JSON
report of what cloudbase-init would do on a Windows node. Exit 2 on an
error-level problem, or on any warning unless --allow-warnings; else 0.
"""
import argparse
import base64
import functools
import hashlib
import importlib
import json
import logging
import ntpath
import os
import re
import shutil
import sys
import tempfile
import types

MISSING_MARK = 'CI_MISSING_JINJA_VAR/'
UD = 'cloudbaseinit.plugins.common.userdataplugins'
CC = UD + '.cloudconfigplugins'


def json_safe(v):
    if isinstance(v, bytes):
        try:
            return v.decode('utf-8')
        except UnicodeDecodeError:
            return {'base64': base64.b64encode(v).decode()}
    if isinstance(v, (list, tuple, set)):
        return [json_safe(x) for x in v]
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return repr(v)


def file_entry(path, data, **extra):
    try:
        body = {'text': data.decode('utf-8')}
    except UnicodeDecodeError:
        body = {'base64': base64.b64encode(data).decode()}
    return dict(path=path, size=len(data),
                sha256=hashlib.sha256(data).hexdigest(), **extra, **body)


# ntpath whose abspath() does not prepend the *Linux* cwd to relative paths,
# so the writer sees (and flags) them as written.
_ntpath = types.ModuleType('ntpath')
_ntpath.__dict__.update(vars(ntpath), abspath=ntpath.normpath)


class WinOs:
    """`os` as a module sees it on Windows: Windows paths, CRLF linesep."""
    path, sep, linesep, name = _ntpath, '\\', '\r\n', 'nt'

    def __getattr__(self, name):
        return getattr(os, name)


class Recorder:
    """Stands in for WindowsUtils: records every call and touches nothing."""

    def __init__(self, root):
        self.root, self.calls, self.commands = root, [], []

    def _rec(self, name, *args, **kwargs):
        self.calls.append({'name': name, 'args': json_safe(args),
                           'kwargs': json_safe(kwargs)})

    # What WindowsUtils answers; any other method is recorded and answers
    # None, so a new osutils call shows up in the report instead of crashing.
    ANSWERS = {
        'get_default_script_exec_header': 'rem cmd',  # SCRIPT_HEADER_CMD
        'set_host_name': True,  # Windows always asks for a reboot
        'user_exists': False, 'group_exists': False,  # a fresh image
        'get_maximum_password_length': 20,
        'create_user_logon_session': 'fake-logon-token',
    }

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)

        def method(*args, **kwargs):
            self._rec(name, *args, **kwargs)
            return self.ANSWERS.get(name)
        return method

    def _script(self, name, kind, path, args, **kwargs):
        # cloudbase-init deletes its temp script right after the call: keep it.
        with open(path, 'rb') as f:
            script = f.read().decode('utf-8', 'replace')
        ref = '<commands[%d]>' % len(self.commands)
        self.commands.append(dict(kind=kind, script=script, **kwargs))
        # The temp path is random: name the command instead, for stable diffs.
        self._rec(name, [ref if a == path else a for a in args], **kwargs)
        return b'', b'', 0  # (stdout, stderr, exit code): success

    def execute_process(self, args, shell=True, decode_output=False,
                        sysnative=True):
        ext = os.path.splitext(args[-1])[1].lower()
        kind = {'.cmd': 'cmd', '.py': 'python', '.sh': 'bash'}.get(ext, 'exe')
        return self._script('execute_process', kind, args[-1], list(args),
                            shell=shell)

    def execute_powershell_script(self, script_path, sysnative=True):
        return self._script('execute_powershell_script', 'powershell',
                            script_path, [script_path], sysnative=sysnative)

    def generate_random_password(self, length):
        self._rec('generate_random_password', length)
        return ('Gen3rated-' * 10)[:length]  # deterministic for diffing

    def get_user_home(self, username):
        # Windows answers C:\Users\<name>; users.py then uses plain os.path
        # and open(), so hand it the mapped directory under root.
        self._rec('get_user_home', username)
        return os.path.join(self.root, 'C', 'Users', username)

    def set_timezone(self, timezone_name):
        self._rec('set_timezone', timezone_name)
        from tzlocal import windows_tz  # the table WindowsUtils checks
        if timezone_name not in windows_tz.tz_win:
            raise Exception('The given timezone name is unrecognised: %r'
                            % timezone_name)


class FileWriter:
    """Replaces write_files._write_file: C:\\x -> <root>/C/x, recorded."""

    def __init__(self, root, problems):
        self.root, self.problems = root, problems
        self.files, self.readonly = [], set()

    def disk_path(self, path):
        drive, rest = ntpath.splitdrive(path)
        top = drive[:1].upper()
        if not re.fullmatch(r'[A-Za-z]:', drive):
            self.problems.append(('ERROR', 'write_files path %r is not a '
                                  'drive-qualified Windows path' % path))
            top, rest = '_nodrive', path
        disk = os.path.join(self.root, top)
        for part in [p for p in re.split(r'[\\/]', rest)
                     if p not in ('', '.', '..')]:
            # NTFS is case-insensitive: reuse an existing entry's spelling.
            same = [e for e in (os.listdir(disk) if os.path.isdir(disk)
                                else []) if e.lower() == part.lower()]
            disk = os.path.join(disk, same[0] if same else part)
        return disk

    def __call__(self, path, content, permissions=0o644, open_mode='wb'):
        key = ntpath.normcase(path)
        if key in self.readonly:
            # os.chmod on Windows only toggles the read-only attribute; a
            # later open() of that file then fails like this.
            raise PermissionError(13, 'Permission denied', path)
        disk = self.disk_path(path)
        os.makedirs(os.path.dirname(disk), exist_ok=True)
        with open(disk, open_mode) as f:
            f.write(content)
        readonly = not permissions & 0o200
        if readonly:
            self.readonly.add(key)
        self.files.append(file_entry(
            path, content, permissions='%04o' % permissions,
            append=open_mode == 'ab', windows_readonly=readonly))
        return True


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records = []

    def emit(self, record):
        msg = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            e = record.exc_info[1]
            msg += ' [%s: %s]' % (type(e).__name__, e)
        self.records.append((record.levelname, record.name, msg))


def summarize(calls, problems):
    """users / groups / ntp / hostname, rebuilt from the osutils calls."""
    users, groups, ntp, hostname = {}, {}, None, None
    created = {c['args'][0] for c in calls if c['name'] == 'create_user'}
    for c in calls:
        n, a, kw = c['name'], c['args'], c['kwargs']
        if n == 'create_user':
            users[a[0]] = {'name': a[0], 'password': a[1], 'groups': [],
                           'logon_session': False}
        elif n == 'set_user_info' and a[0] in users:
            users[a[0]].update(kw)
        elif n == 'create_user_logon_session' and a[0] in users:
            users[a[0]]['logon_session'] = True
        elif n == 'create_group':
            groups[a[0]] = {'name': a[0], 'created': True, 'members': []}
        elif n == 'add_user_to_local_group':
            g = groups.setdefault(a[1], {'name': a[1], 'created': False,
                                         'members': []})
            g['members'].append(a[0])
            if a[0] in created and a[0] not in users:
                # The groups section runs before users: on Windows this
                # raises "Username not found" and aborts the groups plugin.
                problems.append(('ERROR', 'group %r lists user %r, who is '
                                 'only created later by `users`' % (a[1],
                                                                    a[0])))
            if a[0] in users:
                users[a[0]]['groups'].append(a[1])
        elif n == 'set_ntp_client_config':
            ntp = a[0]
        elif n == 'set_host_name':
            hostname = a[0]
    return list(users.values()), list(groups.values()), ntp, hostname


def classify(seen, userdatautils, pem_header):
    """Which branch of userdata.py the payload takes."""
    decoded = seen.get('decoded') or b''
    if not decoded:
        return 'empty'
    if b'Content-Type: multipart' in decoded.split(b'\n\n')[0]:
        return 'multipart'  # checked before any template rendering
    if seen.get('template') and 'rendered' not in seen:
        return 'template-error'
    data = seen.get('rendered', decoded)
    if data.startswith(b'#cloud-config'):
        return 'cloud-config'
    if data.strip().startswith(pem_header.encode()):
        return 'x509'
    for s in userdatautils._SCRIPTS:  # the same table, first match wins
        if s.script_type and s.script_type.search(data):
            return {'Shell': 'cmd', 'Python': 'python', 'Bash': 'bash',
                    'PowershellSysnative': 'ps1', 'Powershell': 'ps1_x86',
                    'EC2Config': 'ec2config'}[s.executor.__name__]
    return 'unsupported'


def run(raw, opts, root, node_name):
    # Capture every cloudbase-init log record (oslo.log loggers are stdlib
    # loggers that propagate to root unless oslo's setup() is called).
    capture = Capture()
    logging.getLogger().addHandler(capture)
    logging.getLogger().setLevel(logging.INFO)

    from cloudbaseinit import conf
    # Defaults only: no stray /etc/cloudbase-init/*.conf can leak in.
    conf.CONF([], project='cloudbase-init', default_config_files=[])
    from cloudbaseinit.metadata.services import base as md_base
    from cloudbaseinit.osutils import factory as osutils_factory
    from cloudbaseinit.plugins.common import base as plugin_base
    from cloudbaseinit.plugins.common import userdata, userdatautils
    from cloudbaseinit.utils import x509constants
    from cloudbaseinit.utils.template_engine import jinja2_template
    cc_factory = importlib.import_module(CC + '.factory')
    for path in (list(conf.CONF.user_data_plugins)
                 + list(cc_factory.PLUGINS.values())):
        importlib.import_module(path.rsplit('.', 1)[0])  # so we can patch

    problems = []  # (level, message)
    recorder = Recorder(root)
    orig = osutils_factory.get_os_utils
    for mod in list(sys.modules.values()):  # also `from factory import ...`
        if getattr(mod, 'get_os_utils', None) is orig:
            mod.get_os_utils = lambda: recorder
    writer = FileWriter(root, problems)
    wf = sys.modules[CC + '.write_files']
    wf.os, wf._write_file = WinOs(), writer
    sys.modules[CC + '.runcmd'].os = WinOs()  # runcmd joins with os.linesep
    # users.py writes authorized_keys in text mode: CRLF on Windows.
    sys.modules[CC + '.users'].open = functools.partial(open, newline='\r\n')
    # cloud-config `hostname:` compares with the current computer name.
    sys.modules['cloudbaseinit.utils.hostname'].platform = \
        types.SimpleNamespace(node=lambda: node_name)

    seen = {}
    orig_render = jinja2_template.Jinja2TemplateEngine.render

    def render(self, data, tpl):
        seen['template'] = self.get_template_type()
        seen['rendered'] = orig_render(self, data, tpl)
        return seen['rendered']
    jinja2_template.Jinja2TemplateEngine.render = render

    class Service(md_base.BaseMetadataService):
        def _get_data(self, path):
            raise md_base.NotExistingMetadataException(path)

        def get_user_data(self):
            return raw

        def get_decoded_user_data(self):  # upstream gunzip, observed
            seen['decoded'] = super().get_decoded_user_data()
            return seen['decoded']

        def get_instance_id(self):
            return opts.instance_id

        def get_host_name(self):
            return opts.hostname

        def get_public_keys(self):
            return []

    status, reboot = None, False
    try:
        status, reboot = userdata.UserDataPlugin().execute(Service(), {})
    except Exception as ex:  # init.py logs this; the plugin reruns next boot
        logging.getLogger('cbi_driver').exception(
            "plugin 'UserDataPlugin' failed with error '%s'", ex)

    files = list(writer.files)
    users, groups, ntp, hostname = summarize(recorder.calls, problems)
    for u in users:  # users.py wrote these with plain open() under root
        p = os.path.join(root, 'C', 'Users', u['name'], '.ssh',
                         'authorized_keys')
        data = open(p, 'rb').read() if os.path.isfile(p) else None
        u['ssh_authorized_keys'] = (data or b'').decode(
            'utf-8', 'replace').splitlines()
        if data is not None:
            files.append(file_entry(
                'C:\\Users\\%s\\.ssh\\authorized_keys' % u['name'], data,
                permissions=None, append=False, writer='users'))

    if not seen.get('decoded'):
        problems.append(('WARNING', 'empty user data: nothing to do'))
    payload = seen.get('rendered', seen.get('decoded')) or b''
    for where, text in ([('payload', payload.decode('utf-8', 'replace'))]
                        + [('file ' + f['path'], f.get('text', ''))
                           for f in files]
                        + [('commands[%d]' % i, c['script'])
                           for i, c in enumerate(recorder.commands)]):
        for var in sorted(set(re.findall(re.escape(MISSING_MARK) + r'\w*',
                                         text))):
            problems.append(('ERROR', 'undefined jinja variable left in %s:'
                             ' %s' % (where, var)))
    problems += [(lvl, '%s: %s' % (name, msg))
                 for lvl, name, msg in capture.records
                 if lvl in ('WARNING', 'ERROR', 'CRITICAL')]

    return problems, {
        'plugin_status': {
            plugin_base.PLUGIN_EXECUTION_DONE: 'EXECUTION_DONE',
            plugin_base.PLUGIN_EXECUTE_ON_NEXT_BOOT: 'EXECUTE_ON_NEXT_BOOT',
        }.get(status, 'FAILED'),
        'reboot': bool(reboot),
        'format': classify(seen, userdatautils, x509constants.PEM_HEADER),
        'gzip': raw[:2] == b'\x1f\x8b',
        'template': seen.get('template'),
        'files': files, 'commands': recorder.commands,
        'users': users, 'groups': groups, 'ntp': ntp, 'hostname': hostname,
        'calls': recorder.calls,
        'problems': ['%s %s' % p for p in problems],
        'log': ['%s %s: %s' % r for r in capture.records],
        'node_name': node_name, 'root': opts.root,
    }


def default_node_name(hostname):
    # In the default plugin list SetHostNamePlugin runs (and reboots) before
    # UserDataPlugin; same rules as cloudbaseinit.utils.hostname.set_hostname.
    return re.sub(r'-$', '0', hostname.split('.', 1)[0][:15])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('payload', help="payload file, '-' for stdin")
    ap.add_argument('--b64', action='store_true',
                    help='payload is base64 text (EC2 UserData / customData)')
    ap.add_argument('--hostname', default='capwin-node-0')
    ap.add_argument('--instance-id', default='i-0123456789abcdef0')
    ap.add_argument('--node-name', help='computer name when UserDataPlugin '
                    'runs (default: --hostname as SetHostNamePlugin sets it)')
    ap.add_argument('--root', help='keep written files here (default: temp)')
    ap.add_argument('--allow-warnings', action='store_true')
    try:
        opts = ap.parse_args()
    except SystemExit as e:  # keep 2 for "the payload has problems"
        return 1 if e.code else 0

    raw = (sys.stdin.buffer.read() if opts.payload == '-'
           else open(opts.payload, 'rb').read())
    if opts.b64:
        raw = base64.b64decode(b''.join(raw.split()), validate=True)
    root = opts.root or tempfile.mkdtemp(prefix='cbi-root-')
    os.makedirs(root, exist_ok=True)
    try:
        problems, report = run(raw, opts, root, opts.node_name or
                               default_node_name(opts.hostname))
    finally:
        if not opts.root:
            shutil.rmtree(root, ignore_errors=True)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write('\n')
    levels = {lvl for lvl, _ in problems}
    if levels & {'ERROR', 'CRITICAL'} or (
            'WARNING' in levels and not opts.allow_warnings):
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
