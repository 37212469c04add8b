"""A small, strict evaluator for the Go text/template subset the cluster templates' HelmChartProxy
`valuesTemplate`s use, so check.py can render them without a Go toolchain.

CAAPH (cluster-api-addon-provider-helm, internal/value_substitutions.go) parses a valuesTemplate
with Go's text/template plus sprig's TxtFuncMap and executes it on a map of unstructured objects:
`.Cluster`, `.ControlPlane`, `.InfraCluster` (each the object as JSON: `.Cluster.spec...`).
This module does the same for exactly this subset and raises GoTemplateError on anything else,
so a template using a construct it does not know fails the check instead of rendering wrongly:

  text, {{ ... }}, {{- ... -}} (whitespace trimming), {{/* comments */}}
  if / else if / else / end, range (over lists and maps, `$i, $x :=` or `$x :=`, with else) / end,
  with / else / end, variable declarations `$x := pipeline` and assignment `$x = pipeline`
  field chains: .a.b, $, $.a, $x, $x.a; string ("..."), integer and true/false literals;
  pipelines `a | f b` (the piped value becomes the last argument) and parentheses
  functions: and, or, not, eq, ne, index, len (Go builtins), quote, join (sprig)

Go semantics reproduced: a missing map key yields no value (printed as "<no value>"); selecting a
field of no value is an error ("nil pointer evaluating interface {}.host"), as in Go; truth is
Go's (nil, false, 0, "" and empty lists/maps are false); `and`/`or` short-circuit and return an
argument (Go 1.18+); values print as fmt's %v does for the types JSON produces.

    render(text, data) -> str          (GoTemplateError on any problem)
    self_test() -> [problem...]        (cases of its own, including an unknown function)
"""
import json
import re


class GoTemplateError(Exception):
    pass


class _NoValue:
    """A missing map key: Go's zero reflect.Value of an interface{} map element."""
    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self):
        return '<no value>'


NO_VALUE = _NoValue()

# --------------------------------------------------------------------------------------------
# Lexing: text and actions
# --------------------------------------------------------------------------------------------

_ACTION = re.compile(r'\{\{(-\s)?(.*?)(\s-)?\}\}', re.S)


def _split(text):
    """[('text', s) | ('action', body)] with the trim markers applied to the neighbouring text."""
    parts, pos = [], 0
    for m in _ACTION.finditer(text):
        before = text[pos:m.start()]
        if m.group(1):
            before = before.rstrip(' \t\r\n')
        parts.append(['text', before])
        parts.append(['action', m.group(2).strip(), bool(m.group(3))])
        pos = m.end()
    parts.append(['text', text[pos:]])
    if '{{' in text[pos:]:
        raise GoTemplateError('unclosed action: %r' % text[pos:][:40])
    out = []
    trim_next = False
    for p in parts:
        if p[0] == 'text':
            s = p[1].lstrip(' \t\r\n') if trim_next else p[1]
            trim_next = False
            if s:
                out.append(('text', s))
        else:
            if p[1].startswith('{{') or '{{' in p[1]:
                raise GoTemplateError('nested {{ in an action: %r' % p[1])
            out.append(('action', p[1]))
            trim_next = p[2]
    return out


_TOKEN = re.compile(r'''\s*(?:
    (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<num>-?\d+)
  | (?P<decl>:=)
  | (?P<assign>=)
  | (?P<pipe>\|)
  | (?P<lp>\()
  | (?P<rp>\))
  | (?P<comma>,)
  | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<bad>\S)
)''', re.X)


def _tokens(src):
    out = []
    pos = 0
    src = src.rstrip()
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m or m.end() == pos:
            break
        pos = m.end()
        kind = m.lastgroup
        val = m.group(kind)
        if kind == 'bad':
            raise GoTemplateError('unexpected %r in action %r' % (val, src))
        out.append((kind, val))
    return out


# --------------------------------------------------------------------------------------------
# Parsing: a tree of nodes
# --------------------------------------------------------------------------------------------

class _Node:
    pass


class _Text(_Node):
    def __init__(self, s):
        self.s = s


class _Print(_Node):
    def __init__(self, pipe):
        self.pipe = pipe


class _If(_Node):
    def __init__(self, kind, decls, pipe):
        self.kind, self.decls, self.pipe = kind, decls, pipe  # kind: if/with/range
        self.body, self.orelse = [], []


class _Assign(_Node):
    def __init__(self, name, pipe, declare):
        self.name, self.pipe, self.declare = name, pipe, declare


def _parse_pipeline(tokens, src):
    """[(command tokens)...] split on top-level '|'; plus declared variables for range/if."""
    decls = []
    # `$a, $b :=` or `$a :=` / `$a =` at the start
    if len(tokens) >= 2 and tokens[0][0] == 'var' and tokens[1][0] in ('decl', 'assign', 'comma'):
        if tokens[1][0] == 'comma':
            if len(tokens) < 4 or tokens[2][0] != 'var' or tokens[3][0] != 'decl':
                raise GoTemplateError('bad declaration in %r' % src)
            decls = [tokens[0][1], tokens[2][1]]
            tokens = tokens[4:]
        else:
            decls = [tokens[0][1]]
            tokens = tokens[2:]
    cmds, cur, depth = [], [], 0
    for t in tokens:
        if t[0] == 'lp':
            depth += 1
        elif t[0] == 'rp':
            depth -= 1
            if depth < 0:
                raise GoTemplateError('unbalanced ) in %r' % src)
        if t[0] == 'pipe' and depth == 0:
            cmds.append(cur)
            cur = []
        else:
            cur.append(t)
    if depth:
        raise GoTemplateError('unbalanced ( in %r' % src)
    cmds.append(cur)
    if any(not c for c in cmds):
        raise GoTemplateError('empty command in pipeline %r' % src)
    return decls, cmds


KEYWORDS_UNSUPPORTED = {'define', 'template', 'block', 'break', 'continue'}


def _parse(parts):
    root = []
    stack = [(None, root)]  # (node, list being filled)

    def current():
        return stack[-1][1]

    for kind, val in parts:
        if kind == 'text':
            current().append(_Text(val))
            continue
        if val.startswith('/*'):
            if not val.endswith('*/'):
                raise GoTemplateError('unclosed comment %r' % val)
            continue
        toks = _tokens(val)
        if not toks:
            raise GoTemplateError('empty action {{%s}}' % val)
        head = toks[0]
        word = head[1] if head[0] == 'ident' else None
        if word in KEYWORDS_UNSUPPORTED:
            raise GoTemplateError('unsupported action {{%s}}' % val)
        if word in ('if', 'with', 'range'):
            decls, cmds = _parse_pipeline(toks[1:], val)
            if decls and word != 'range' and len(decls) > 1:
                raise GoTemplateError('two variables only in range: {{%s}}' % val)
            node = _If(word, decls, cmds)
            current().append(node)
            stack.append((node, node.body))
        elif word == 'else':
            node = stack[-1][0]
            if node is None or stack[-1][1] is node.orelse:
                raise GoTemplateError('{{else}} without if/with/range')
            if len(toks) > 1:
                if toks[1] != ('ident', 'if') or node.kind == 'range':
                    raise GoTemplateError('unsupported {{%s}}' % val)
                decls, cmds = _parse_pipeline(toks[2:], val)
                inner = _If('if', decls, cmds)
                node.orelse.append(inner)
                # `else if` shares the outer `end`: replace the frame
                stack[-1] = (inner, inner.body)
                inner.chained_from = node
            else:
                stack[-1] = (node, node.orelse)
        elif word == 'end':
            if len(toks) > 1:
                raise GoTemplateError('unexpected tokens after end: {{%s}}' % val)
            if stack[-1][0] is None:
                raise GoTemplateError('{{end}} without if/with/range')
            stack.pop()
        else:
            decls, cmds = _parse_pipeline(toks, val)
            if decls:
                if len(decls) != 1:
                    raise GoTemplateError('bad declaration {{%s}}' % val)
                declare = any(t[0] == 'decl' for t in toks[:3])
                current().append(_Assign(decls[0], cmds, declare))
            else:
                current().append(_Print(cmds))
    if len(stack) != 1:
        raise GoTemplateError('missing {{end}} for %s' % stack[-1][0].kind)
    return root


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------

def truth(v):
    if v is None or v is NO_VALUE or v is False:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, (str, list, dict, tuple)):
        return len(v) > 0
    return True


def fmt_value(v):
    """fmt's %v for JSON-shaped values."""
    if v is NO_VALUE:
        return '<no value>'
    if v is None:
        return '<nil>'
    if isinstance(v, bool):
        return 'true' if v else 'false'
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        return '[' + ' '.join(fmt_value(x) for x in v) + ']'
    if isinstance(v, dict):
        return 'map[' + ' '.join('%s:%s' % (k, fmt_value(v[k])) for k in sorted(v)) + ']'
    raise GoTemplateError('cannot print %r' % (v,))


def _strval(v):
    if isinstance(v, str):
        return v
    return fmt_value(v)


def _go_quote(s):
    """strconv.Quote for the strings these templates produce (printable ASCII and UTF-8)."""
    return json.dumps(s, ensure_ascii=False)


def _fn_quote(*args):
    return ' '.join(_go_quote(_strval(a)) for a in args if a is not None and a is not NO_VALUE)


def _fn_join(sep, v):
    if isinstance(v, list):
        items = v
    elif v is None or v is NO_VALUE:
        items = []
    else:
        items = [v]
    return _strval(sep).join(_strval(x) for x in items if x is not None)


def _fn_index(item, *keys):
    for k in keys:
        if isinstance(item, dict):
            item = item.get(k, NO_VALUE)
        elif isinstance(item, list):
            if not isinstance(k, int) or isinstance(k, bool):
                raise GoTemplateError('index of a list with %r' % (k,))
            if not 0 <= k < len(item):
                raise GoTemplateError('index out of range: %d' % k)
            item = item[k]
        else:
            raise GoTemplateError("can't index item of type %s" % type(item).__name__)
    return item


def _fn_len(v):
    if isinstance(v, (str, list, dict)):
        return len(v)
    raise GoTemplateError('len of %r' % (v,))


def _fn_eq(a, *bs):
    if not bs:
        raise GoTemplateError('missing argument for comparison')
    for b in bs:
        if a is NO_VALUE or b is NO_VALUE:
            raise GoTemplateError('incompatible types for comparison')
        if isinstance(a, bool) != isinstance(b, bool) or (
                isinstance(a, (int, float)) != isinstance(b, (int, float))) or (
                isinstance(a, str) != isinstance(b, str)):
            raise GoTemplateError('incompatible types for comparison: %r, %r' % (a, b))
        if a == b:
            return True
    return False


FUNCS = {
    'not': lambda v: not truth(v),
    'eq': _fn_eq,
    'ne': lambda a, b: not _fn_eq(a, b),
    'index': _fn_index,
    'len': _fn_len,
    'quote': _fn_quote,
    'join': _fn_join,
}
LAZY = {'and', 'or'}


class _Scope:
    def __init__(self, root):
        self.frames = [{'$': root}]

    def push(self):
        self.frames.append({})

    def pop(self):
        self.frames.pop()

    def declare(self, name, value):
        self.frames[-1][name] = value

    def assign(self, name, value):
        for f in reversed(self.frames):
            if name in f:
                f[name] = value
                return
        raise GoTemplateError('undefined variable: %s' % name)

    def get(self, name):
        for f in reversed(self.frames):
            if name in f:
                return f[name]
        raise GoTemplateError('undefined variable: %s' % name)


def _field(value, name, path):
    if value is NO_VALUE or value is None:
        raise GoTemplateError('nil pointer evaluating interface {}.%s (at %s)' % (name, path))
    if isinstance(value, dict):
        return value.get(name, NO_VALUE)
    raise GoTemplateError("can't evaluate field %s in type %s (at %s)" % (name, type(value).__name__, path))


def _chain(value, names, path):
    for n in names:
        value = _field(value, n, path)
    return value


class _Evaluator:
    def __init__(self, root):
        self.scope = _Scope(root)

    def operand(self, tok, dot):
        kind, val = tok
        if kind == 'str':
            try:
                return json.loads(val)
            except ValueError:
                raise GoTemplateError('bad string literal %s' % val)
        if kind == 'raw':
            return val[1:-1]
        if kind == 'num':
            return int(val)
        if kind == 'field':
            if val == '.':
                return dot
            return _chain(dot, val[1:].split('.'), val)
        if kind == 'var':
            name, _, rest = val.partition('.')
            v = self.scope.get(name)
            return _chain(v, rest.split('.'), val) if rest else v
        if kind == 'ident':
            if val == 'true':
                return True
            if val == 'false':
                return False
            if val == 'nil':
                raise GoTemplateError('nil is not a command')
            raise GoTemplateError('function %s used as a value' % val)
        raise GoTemplateError('unexpected %r' % val)

    def args(self, toks, dot):
        """Evaluate a command's argument tokens (parenthesised sub-pipelines included)."""
        out, i = [], 0
        while i < len(toks):
            t = toks[i]
            if t[0] == 'lp':
                depth, j = 1, i + 1
                while j < len(toks) and depth:
                    depth += {'lp': 1, 'rp': -1}.get(toks[j][0], 0)
                    j += 1
                inner = toks[i + 1:j - 1]
                _, cmds = _parse_pipeline(inner, 'parenthesised pipeline')
                out.append(lambda c=cmds: self.pipeline(c, dot))
                i = j
                continue
            if t[0] == 'ident' and t[1] not in ('true', 'false'):
                # a function name as an argument: a niladic call is not supported here
                raise GoTemplateError('function %s needs parentheses as an argument' % t[1])
            out.append(lambda t=t: self.operand(t, dot))
            i += 1
        return out

    def command(self, toks, dot, piped):
        head = toks[0]
        if head[0] == 'ident' and head[1] not in ('true', 'false'):
            name = head[1]
            thunks = self.args(toks[1:], dot)
            if piped is not _NOTHING:
                thunks.append(lambda: piped)
            if name in LAZY:
                if not thunks:
                    raise GoTemplateError('%s needs arguments' % name)
                v = None
                for th in thunks:
                    v = th()
                    if (name == 'and') != truth(v):
                        return v
                return v
            if name not in FUNCS:
                raise GoTemplateError('function %r not defined (this evaluator supports %s)'
                                      % (name, ', '.join(sorted(set(FUNCS) | LAZY))))
            try:
                return FUNCS[name](*[th() for th in thunks])
            except TypeError as e:
                raise GoTemplateError('wrong number of arguments for %s: %s' % (name, e))
        if len(toks) == 1 and head[0] != 'lp':
            if piped is not _NOTHING:
                raise GoTemplateError("can't give argument to non-function %s" % head[1])
            return self.operand(head, dot)
        if head[0] == 'lp' and len(self.args(toks, dot)) == 1:
            if piped is not _NOTHING:
                raise GoTemplateError("can't give argument to a parenthesised value")
            return self.args(toks, dot)[0]()
        raise GoTemplateError("can't call non-function %s" % head[1])

    def pipeline(self, cmds, dot):
        v = _NOTHING
        for c in cmds:
            v = self.command(c, dot, v)
        return v

    def run(self, nodes, dot, out):
        for n in nodes:
            if isinstance(n, _Text):
                out.append(n.s)
            elif isinstance(n, _Print):
                out.append(fmt_value(self.pipeline(n.pipe, dot)))
            elif isinstance(n, _Assign):
                v = self.pipeline(n.pipe, dot)
                if n.declare:
                    self.scope.declare(n.name, v)
                else:
                    self.scope.assign(n.name, v)
            elif isinstance(n, _If):
                self.control(n, dot, out)
            else:
                raise GoTemplateError('internal: unknown node %r' % n)

    def control(self, n, dot, out):
        self.scope.push()
        try:
            v = self.pipeline(n.pipe, dot)
            if n.kind == 'range':
                if v is NO_VALUE or v is None:
                    items = []
                elif isinstance(v, list):
                    items = list(enumerate(v))
                elif isinstance(v, dict):
                    items = [(k, v[k]) for k in sorted(v)]
                elif isinstance(v, int) and not isinstance(v, bool):
                    items = [(i, i) for i in range(v)]
                else:
                    raise GoTemplateError("range can't iterate over %r" % (v,))
                if not items:
                    self.run(n.orelse, dot, out)
                for k, x in items:
                    self.scope.push()
                    if len(n.decls) == 2:
                        self.scope.declare(n.decls[0], k)
                        self.scope.declare(n.decls[1], x)
                    elif n.decls:
                        self.scope.declare(n.decls[0], x)
                    self.run(n.body, x, out)
                    self.scope.pop()
                return
            if n.decls:
                self.scope.declare(n.decls[0], v)
            if truth(v):
                self.run(n.body, v if n.kind == 'with' else dot, out)
            else:
                self.run(n.orelse, dot, out)
        finally:
            self.scope.pop()


class _Nothing:
    pass


_NOTHING = _Nothing()


def render(text, data):
    """Execute `text` on `data` (a dict: Cluster, ControlPlane, InfraCluster) as CAAPH would."""
    tree = _parse(_split(text))
    out = []
    _Evaluator(data).run(tree, data, out)
    return ''.join(out)


# --------------------------------------------------------------------------------------------
# Self-test
# --------------------------------------------------------------------------------------------

SELF_TEST = [
    # (template, data, expected output or GoTemplateError message fragment)
    ('a{{ .x }}b', {'x': 1}, 'a1b'),
    ('a  {{- .x -}}  \n b', {'x': 'v'}, 'avb'),
    ('{{ .missing }}', {}, '<no value>'),
    ('{{ .a.b }}', {}, GoTemplateError('nil pointer evaluating interface {}.b')),
    ('{{ with .a }}{{ .b }}{{ end }}|', {}, '|'),
    ('{{- with .e }}{{ if and .host .port }}{{ .host }}:{{ .port }}{{ end }}{{ end -}}',
     {'e': {'host': 'h', 'port': 6443}}, 'h:6443'),
    ('{{- with .e }}{{ if and .host .port }}{{ .host }}:{{ .port }}{{ end }}{{ end -}}',
     {'e': {'host': 'h', 'port': 0}}, ''),
    ('{{ range $i, $c := .l }}[{{ $i }}={{ $c }}]{{ end }}', {'l': ['a', 'b']}, '[0=a][1=b]'),
    ('{{ range .l }}{{ . }}{{ else }}none{{ end }}', {'l': []}, 'none'),
    ('{{ range $c := .l }}{{ $.p }}{{ $c }}{{ end }}', {'l': ['a'], 'p': '>'}, '>a'),
    ('{{ .l | join "," }}', {'l': ['10.0.0.0/8', '192.168.0.0/16']}, '10.0.0.0/8,192.168.0.0/16'),
    ('{{ .p | quote }}', {'p': 6443}, '"6443"'),
    ('{{ quote .s }}', {'s': 'a"b'}, '"a\\"b"'),
    ('{{ index .l 1 }}', {'l': ['a', 'b']}, 'b'),
    ('{{ if eq .k "x" }}yes{{ else if .y }}y{{ else }}no{{ end }}', {'k': 'z', 'y': 1}, 'y'),
    ('{{ if not .k }}empty{{ end }}', {'k': ''}, 'empty'),
    ('{{ $x := .a }}{{ $x }}', {'a': 'v'}, 'v'),
    ('{{ $x := 1 }}{{ if .a }}{{ $x = 2 }}{{ end }}{{ $x }}', {'a': True}, '2'),
    ('{{ $y = 1 }}', {}, GoTemplateError('undefined variable: $y')),
    ('{{/* comment */}}ok', {}, 'ok'),
    ('{{ toYaml .a }}', {'a': {}}, GoTemplateError("function 'toYaml' not defined")),
    ('{{ upper .a }}', {'a': 'x'}, GoTemplateError("function 'upper' not defined")),
    ('{{ template "x" }}', {}, GoTemplateError('unsupported action')),
    ('{{ if .a }}x', {'a': 1}, GoTemplateError('missing {{end}}')),
    ('{{ end }}', {}, GoTemplateError('{{end}} without')),
    ('{{ .a', {}, GoTemplateError('unclosed action')),
]


def self_test():
    problems = []
    for tpl, data, want in SELF_TEST:
        try:
            got = render(tpl, data)
        except GoTemplateError as e:
            if not isinstance(want, GoTemplateError) or str(want) not in str(e):
                problems.append('%r: raised %r, want %r' % (tpl, str(e), want))
            continue
        if isinstance(want, GoTemplateError):
            problems.append('%r: rendered %r, want an error %r' % (tpl, got, str(want)))
        elif got != want:
            problems.append('%r: rendered %r, want %r' % (tpl, got, want))
    return problems


if __name__ == '__main__':
    import sys
    p = self_test()
    for line in p:
        print(line)
    print('gotemplate self-test: %d cases, %d failed' % (len(SELF_TEST), len(p)))
    sys.exit(1 if p else 0)
