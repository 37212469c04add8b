"""PowerShell syntax check for the scripts embedded in capwin's cluster templates.

    pslint.py FILE...

Parses each file with the tree-sitter PowerShell grammar (the grammar the Rust payload tests use
for bootstrap.ps1) and reports syntax errors, plus the PowerShell 7 operators that Windows
PowerShell 5.1 (the powershell.exe HostProcess containers run) rejects but the grammar accepts:
`&&`, `||`, `??`, `?.` outside strings and comments. One line per problem:

    FILE:LINE:COLUMN: MESSAGE

Exit code 1 if any problem was found, 0 otherwise.
"""
import sys


def syntax_errors(src):
    import tree_sitter  # only here: check.py imports ps7_only without the grammar installed
    import tree_sitter_powershell
    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
    tree = parser.parse(src.encode('utf-8'))
    out = []

    def walk(node):
        if node.is_error or node.is_missing:
            row, col = node.start_point
            out.append((row + 1, col + 1, 'syntax error (%s%s)' % (
                'missing ' if node.is_missing else '', node.type)))
            return
        for child in node.children:
            if child.has_error or child.is_missing:
                walk(child)

    walk(tree.root_node)
    return out


def strip_strings_and_comments(line):
    out, quote = [], None
    for c in line:
        if quote:
            if c == quote:
                quote = None
        elif c in '\'"':
            quote = c
        elif c == '#':
            break
        else:
            out.append(c)
    return ''.join(out)


def ps7_only(src):
    found = []
    for i, line in enumerate(src.splitlines(), 1):
        code = strip_strings_and_comments(line)
        for op in ('&&', '||', '??', '?.'):
            if op in code:
                found.append((i, code.index(op) + 1,
                              '%s is PowerShell 7 only; Windows PowerShell 5.1 rejects it' % op))
    return found


def main(paths):
    problems = 0
    for path in paths:
        with open(path, encoding='utf-8') as f:
            src = f.read()
        for line, col, msg in syntax_errors(src) + ps7_only(src):
            problems += 1
            print('%s:%d:%d: %s' % (path, line, col, msg))
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
