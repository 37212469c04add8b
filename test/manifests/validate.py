#!/usr/bin/env python3
"""Validate Kubernetes manifests against their real schemas.

    python validate.py [--k8s-version 1.34] [--crds DIR]... [--vars FILE] [--default-vars] [-v] FILES...

* Built-in kinds (apps/v1 Deployment, v1 ConfigMap, rbac, apiextensions CRDs, ...) are checked with
  kubernetes-validate (the upstream OpenAPI schemas of the chosen Kubernetes release, strict mode:
  unknown fields are errors).
* Custom resources are checked against the openAPIV3Schema of the served version of their CRD,
  translated to JSON Schema (draft 2020-12) with the Kubernetes structural-schema rules and checked
  with jsonschema. Unknown fields are errors (the API server drops them without a word unless the
  client asks for strict field validation) unless x-kubernetes-preserve-unknown-fields. Schema defaults are applied first, as the API server does.
  CEL rules (x-kubernetes-validations) are NOT evaluated; -v lists the ones that apply.
* CRDs come from --crds (default: <repo>/crds/bootstrap, <repo>/crds/infrastructure,
  <repo>/test/kit/capi-crds (the Cluster API, CAPA, CAPZ and CAAPH CRDs the templates use) and
  <repo>/../shared/capi-crds; the first definition of a kind wins) and from the CustomResourceDefinition documents among FILES themselves.
* clusterctl variables (${NAME}, ${NAME:=default}, ...) are substituted only with --vars and/or
  --default-vars; see README.md for the placeholder rule.

Prints one line per problem, `FILE#DOC KIND/NAME: PATH: MESSAGE` (DOC counts the YAML documents of the
file from 0, empty ones included), then a summary line. Exit 1 on any problem, 0 otherwise, 2 on a
usage error (bad option, unreadable --crds).
"""

import argparse
import base64
import copy
import difflib
import json
import os
import re
import sys

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv_utils
from referencing import Registry, Resource

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_CRDS = [os.path.join(REPO, 'crds', 'bootstrap'),
                os.path.join(REPO, 'crds', 'infrastructure'),
                os.path.join(REPO, 'test', 'kit', 'capi-crds'),
                os.path.normpath(os.path.join(REPO, '..', 'shared', 'capi-crds'))]
OBJECT_META = 'io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta'


class UsageError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# YAML: what kubectl (sigs.k8s.io/yaml, go-yaml v2 rules) would produce, plus duplicate keys.
# --------------------------------------------------------------------------------------------

class K8sYamlLoader(getattr(yaml, 'CSafeLoader', yaml.SafeLoader)):  # libyaml: ~10x faster
    """SafeLoader tuned towards go-yaml v2, which kubectl uses:
    timestamps stay strings, no sexagesimal (base 60) numbers, y/n/Y/N are booleans,
    `1e3` is a float; duplicate mapping keys are recorded (PyYAML silently keeps the last)."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates = []  # (key, line)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != 'tag:yaml.org,2002:merge':
                key = key_node.value
                if key in seen:
                    self.duplicates.append((key, key_node.start_mark.line + 1))
                seen[key] = True
        return super().construct_mapping(node, deep=deep)


K8sYamlLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers
         if tag not in ('tag:yaml.org,2002:timestamp', 'tag:yaml.org,2002:int',
                        'tag:yaml.org,2002:float', 'tag:yaml.org,2002:bool')]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
K8sYamlLoader.add_implicit_resolver(
    'tag:yaml.org,2002:bool',
    re.compile(r'^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE'
               r'|on|On|ON|off|Off|OFF)$'),
    list('yYnNtTfFoO'))
K8sYamlLoader.add_implicit_resolver(
    'tag:yaml.org,2002:int',
    re.compile(r'^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$'),
    list('-+0123456789'))
K8sYamlLoader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*\.[0-9_]*)(?:[eE][-+]?[0-9]+)?'
               r'|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+'
               r'|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$'),
    list('-+0123456789.'))


def _construct_value(loader, node):  # a bare `=` (YAML 1.1 value key), see pyyaml#89
    return str(node.value)


def _construct_binary(loader, node):  # keep the base64 text; JSON has no bytes
    return ''.join(str(node.value).split())


def _construct_bool(loader, node):  # go-yaml v2's table, y/Y/n/N included
    return loader.construct_scalar(node).lower() in ('y', 'yes', 'true', 'on')


K8sYamlLoader.add_constructor('tag:yaml.org,2002:bool', _construct_bool)
K8sYamlLoader.add_constructor('tag:yaml.org,2002:value', _construct_value)
K8sYamlLoader.add_constructor('tag:yaml.org,2002:binary', _construct_binary)


def to_json_like(x):
    """Like YAML->JSON conversion: map keys become strings (true -> "true", 1 -> "1")."""
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            if isinstance(k, bool):
                k = 'true' if k else 'false'
            elif k is None:
                k = 'null'
            elif not isinstance(k, str):
                k = str(k)
            out[k] = to_json_like(v)
        return out
    if isinstance(x, list):
        return [to_json_like(v) for v in x]
    if isinstance(x, bytes):
        return base64.b64encode(x).decode()
    return x


def yaml_error_text(e):
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        msg = 'line %d column %d: %s' % (e.problem_mark.line + 1, e.problem_mark.column + 1,
                                         e.problem or 'syntax error')
        if e.context:
            msg += ' (%s%s)' % (e.context, ' at line %d' % (e.context_mark.line + 1)
                                if e.context_mark is not None else '')
        return msg
    return ' '.join(str(e).split())


def load_documents(text):
    """Yields (index, obj_or_None, duplicates, parse_error). A parse error ends the stream."""
    loader = K8sYamlLoader(text)
    idx = 0
    try:
        while True:
            try:
                if not loader.check_node():
                    break
                node = loader.get_node()
                obj = loader.construct_document(node) if node is not None else None
            except yaml.YAMLError as e:
                yield idx, None, [], yaml_error_text(e)
                return
            yield idx, obj, loader.duplicates, None
            loader.duplicates = []
            idx += 1
    finally:
        loader.dispose()


# --------------------------------------------------------------------------------------------
# clusterctl variables
# --------------------------------------------------------------------------------------------

VAR_RE = re.compile(r'\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[=-])([^}]*))?\}')
UNRESOLVED_RE = re.compile(r'\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[=-][^}]*)?\}')


def placeholder(name, k8s_version):
    """The type-plausible value --default-vars uses for a variable without a default."""
    if re.search(r'(_COUNT|_REPLICAS|_PORT|_SIZE|_GB|_NUMBER)$', name):
        return '1'
    if name == 'KUBERNETES_VERSION' or name.endswith('_KUBERNETES_VERSION'):
        return 'v%s.0' % k8s_version
    if re.search(r'(_B64|_BASE64)$', name):
        return base64.b64encode(b'placeholder').decode()
    if name.endswith('_ENABLED'):
        return 'false'
    return 'placeholder'


def read_vars_file(path):
    out = {}
    with open(path, encoding='utf-8') as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip('\r\n')
            if not line.strip() or line.lstrip().startswith('#'):
                continue
            if '=' not in line:
                raise UsageError('%s:%d: expected KEY=VALUE, got %r' % (path, n, line))
            key, value = line.split('=', 1)
            key = key.strip()
            if key.startswith('export '):
                key = key[len('export '):].strip()
            if not re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*', key):
                raise UsageError('%s:%d: bad variable name %r' % (path, n, key))
            out[key] = value
    return out


def substitute(text, values, use_placeholders, k8s_version):
    """envsubst as clusterctl does it: ${X}, ${X:=d}/${X:-d} (d if unset or empty),
    ${X=d}/${X-d} (d if unset). Unresolvable references are left in place (reported later)."""
    def repl(m):
        name, op, default = m.group(1), m.group(2), m.group(3)
        if name in values and not (op and op.startswith(':') and values[name] == ''):
            return values[name]
        if op is not None:
            return default
        if use_placeholders:
            return placeholder(name, k8s_version)
        return m.group(0)
    return VAR_RE.sub(repl, text)


def find_unresolved(x, path=()):
    if isinstance(x, dict):
        for k, v in x.items():
            for m in UNRESOLVED_RE.findall(k):
                yield path + (k,), m
            yield from find_unresolved(v, path + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from find_unresolved(v, path + (i,))
    elif isinstance(x, str):
        for m in UNRESOLVED_RE.findall(x):
            yield path, m


# --------------------------------------------------------------------------------------------
# Reporting helpers
# --------------------------------------------------------------------------------------------

def fmt_path(path):
    out = ''
    for p in path:
        if isinstance(p, int):
            out += '[%d]' % p
        elif re.fullmatch(r'[A-Za-z_$][A-Za-z0-9_$-]*', p):
            out += ('.' if out else '') + p
        else:
            out += '[%s]' % json.dumps(p)
    return out or '(root)'


def short(x, limit=80):
    try:
        s = json.dumps(x, sort_keys=True, default=str)
    except (TypeError, ValueError):
        s = repr(x)
    return s if len(s) <= limit else s[:limit - 1] + '…'


JSON_TYPE = {bool: 'boolean', int: 'integer', float: 'number', str: 'string',
             list: 'array', dict: 'object', type(None): 'null'}


def describe_errors(errors):
    """All errors of one object; an anyOf/oneOf failure is dropped where a type error at the same
    path already says it (int-or-string fields carry both)."""
    typed = {tuple(e.absolute_path) for e in errors if e.validator == 'type'}
    out = []
    for e in errors:
        if e.validator in ('anyOf', 'oneOf') and tuple(e.absolute_path) in typed:
            continue
        out.extend(describe_error(e))
    return out


def describe_error(e):
    """jsonschema error -> [(path tuple, message)] in Kubernetes-like words."""
    path = tuple(e.absolute_path)
    v, vv, inst = e.validator, e.validator_value, e.instance
    if v == 'additionalProperties' and vv is False and isinstance(inst, dict):
        known = set((e.schema.get('properties') or {}).keys())
        pats = list((e.schema.get('patternProperties') or {}).keys())
        extra = [k for k in inst if k not in known and not any(re.search(p, k) for p in pats)]
        # kubectl's default --validate=strict makes the API server reject it; controllers,
        # ClusterResourceSets and `kubectl --validate=false` get it dropped without a word.
        suffix = ' (dropped silently unless the client asks for strict field validation)'
        out = []
        for k in extra:
            hint = difflib.get_close_matches(k, sorted(known), n=1)
            out.append((path + (k,), 'unknown field %s%s%s' % (
                json.dumps(k), suffix, '; did you mean %s?' % json.dumps(hint[0]) if hint else '')))
        return out or [(path, e.message)]
    if v == 'required':
        m = re.match(r"^'(.*)' is a required property$", e.message)
        if m:
            return [(path + (m.group(1),), 'required field is missing')]
    if v == 'type':
        want = [vv] if isinstance(vv, str) else list(vv)
        want = [t for t in want if t != 'null'] or want
        got = JSON_TYPE.get(type(inst), type(inst).__name__)
        got = got if inst is None else '%s %s' % (got, short(inst))
        return [(path, 'invalid type: got %s, want %s' % (got, ' or '.join(want)))]
    if v == 'enum':
        return [(path, 'unsupported value %s; supported values: %s'
                 % (short(inst), ', '.join(json.dumps(x) for x in vv)))]
    if v == 'pattern':
        return [(path, '%s does not match pattern %s' % (short(inst), json.dumps(vv)))]
    if v in ('minLength', 'maxLength') and isinstance(inst, str):
        return [(path, 'must be %s %d characters long (is %d)'
                 % ('at least' if v == 'minLength' else 'at most', vv, len(inst)))]
    if v in ('minItems', 'maxItems') and isinstance(inst, list):
        return [(path, 'must have %s %d items (has %d)'
                 % ('at least' if v == 'minItems' else 'at most', vv, len(inst)))]
    if v in ('minProperties', 'maxProperties') and isinstance(inst, dict):
        return [(path, 'must have %s %d fields (has %d)'
                 % ('at least' if v == 'minProperties' else 'at most', vv, len(inst)))]
    if v in ('minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum'):
        word = {'minimum': 'greater than or equal to', 'maximum': 'less than or equal to',
                'exclusiveMinimum': 'greater than', 'exclusiveMaximum': 'less than'}[v]
        return [(path, '%s: must be %s %s' % (short(inst), word, vv))]
    if v in ('oneOf', 'anyOf'):
        msg = '%s matches none of the allowed alternatives' % short(inst)
        if e.context:
            best = jsonschema.exceptions.best_match(e.context)
            if best is not None:
                msg += ' (e.g. %s)' % short(best.message, 200)
        return [(path, msg)]
    return [(path, short(e.message, 300) if not isinstance(e.message, str) else
             (e.message if len(e.message) <= 300 else e.message[:299] + '…'))]


# ObjectMeta checks the OpenAPI schemas cannot express (apimachinery's ValidateObjectMeta).
DNS1123_LABEL = re.compile(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')
DNS1123_SUBDOMAIN = re.compile(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')
QUALIFIED_NAME = re.compile(r'^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$')
LABEL_VALUE = re.compile(r'^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$')


def qualified_name_problem(key):
    prefix, _, name = key.rpartition('/')
    if '/' in key and (not prefix or len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        return 'prefix %s must be a DNS-1123 subdomain (at most 253 characters)' % json.dumps(prefix)
    if not name or len(name) > 63 or not QUALIFIED_NAME.match(name):
        return ('name part %s must be at most 63 characters of alphanumerics, "-", "_" or ".", '
                'starting and ending with an alphanumeric' % json.dumps(name))
    return None


def check_object_meta(meta, custom_resource):
    out = []
    if not isinstance(meta, dict):
        return [(('metadata',), 'required field is missing')] if meta is None else []
    name, gen = meta.get('name'), meta.get('generateName')
    if not name and not gen:
        out.append((('metadata', 'name'), 'required field is missing (neither name nor generateName)'))
    if custom_resource and isinstance(name, str) and name and (
            len(name) > 253 or not DNS1123_SUBDOMAIN.match(name)):
        out.append((('metadata', 'name'), '%s: a custom resource name must be a lower-case '
                    'RFC 1123 subdomain (at most 253 characters)' % json.dumps(name)))
    ns = meta.get('namespace')
    if isinstance(ns, str) and ns and (len(ns) > 63 or not DNS1123_LABEL.match(ns)):
        out.append((('metadata', 'namespace'),
                    '%s: must be a lower-case RFC 1123 label (at most 63 characters)' % json.dumps(ns)))
    labels = meta.get('labels')
    if isinstance(labels, dict):
        for k, v in labels.items():
            p = qualified_name_problem(k)
            if p:
                out.append((('metadata', 'labels', k), 'invalid label key: ' + p))
            if isinstance(v, str) and (len(v) > 63 or not LABEL_VALUE.match(v)):
                out.append((('metadata', 'labels', k), 'invalid label value %s: at most 63 characters '
                            'of alphanumerics, "-", "_" or ".", starting and ending with an '
                            'alphanumeric' % short(v)))
    ann = meta.get('annotations')
    if isinstance(ann, dict):
        total = 0
        for k, v in ann.items():
            p = qualified_name_problem(k.lower())
            if p:
                out.append((('metadata', 'annotations', k), 'invalid annotation key: ' + p))
            total += len(k) + (len(v) if isinstance(v, str) else 0)
        if total > 256 * 1024:
            out.append((('metadata', 'annotations'),
                        'annotations total %d bytes; must be at most 262144' % total))
    return out


# --------------------------------------------------------------------------------------------
# Built-in kinds: kubernetes-validate
# --------------------------------------------------------------------------------------------

class Builtins:
    def __init__(self, k8s_version):
        versions = sorted(set(kv_utils.all_versions()), key=lambda v: tuple(map(int, v.split('.'))))
        by_mm = {kv_utils.major_minor(v): v for v in versions}
        mm = kv_utils.major_minor(k8s_version.lstrip('v'))
        if mm not in by_mm:
            raise UsageError('kubernetes-validate %s has no schemas for Kubernetes %s (it has %s)'
                             % (kubernetes_validate.__version__, k8s_version, ', '.join(by_mm)))
        self.version = mm
        self.schema_dir = 'v%s-local-strict' % by_mm[mm]
        self.defs = kv_utils.schema_contents(
            'kubernetes-json-schema/%s/_definitions.json' % self.schema_dir, mm)
        self.gvks = set()
        for d in self.defs['$defs'].values():
            for g in d.get('x-kubernetes-group-version-kind') or []:
                self.gvks.add((g.get('group', ''), g['version'], g['kind']))
        self._validators = {}

    def object_meta_defs(self):
        """ObjectMeta and every definition it references, for embedding in CRD schemas."""
        all_defs = self.defs['$defs']
        out, todo = {}, [OBJECT_META]
        while todo:
            name = todo.pop()
            if name in out:
                continue
            out[name] = all_defs[name]
            for ref in re.findall(r'"\$ref": "#/\$defs/([^"]+)"', json.dumps(all_defs[name])):
                todo.append(ref)
        return out

    def kinds_of_group(self, group):
        return {(v, k) for g, v, k in self.gvks if g == group}

    def _all_errors(self, obj):
        """Every error (kubernetes_validate.validate reports only the best one); same schemas,
        same registry construction as kubernetes_validate.utils.validate."""
        api = re.sub(r'^([^./]*)(?:\.[^/]*)?/', r'\1-', obj['apiVersion'])
        key = (obj['kind'].lower(), api)
        if key not in self._validators:
            schema = kv_utils.schema_contents('kubernetes-json-schema/%s/%s-%s.json'
                                              % (self.schema_dir, key[0], api), self.version)
            registry = Resource.from_contents(self.defs) @ (Resource.from_contents(schema) @ Registry())
            self._validators[key] = jsonschema.validators.Draft202012Validator(schema, registry=registry)
        return list(self._validators[key].iter_errors(obj))

    def validate(self, obj):
        try:
            kubernetes_validate.validate(obj, self.version, strict=True)
            return []
        except kubernetes_validate.ValidationError as first:
            try:
                errors = self._all_errors(obj) or [first]
            except Exception:  # internals changed: the one error kubernetes-validate gave is enough
                errors = [first]
        except kubernetes_validate.SchemaNotFoundError as e:
            return [(('kind',), e.message)]
        return describe_errors(errors)


# --------------------------------------------------------------------------------------------
# Custom resources: CRD openAPIV3Schema -> JSON Schema 2020-12
# --------------------------------------------------------------------------------------------

COPY_KEYWORDS = ('required', 'pattern', 'minLength', 'maxLength', 'minItems', 'maxItems',
                 'minProperties', 'maxProperties', 'uniqueItems', 'multipleOf',
                 'x-kubernetes-list-type', 'x-kubernetes-list-map-keys')


def convert_schema(s, junctor=False):
    """One structural-schema node -> JSON Schema. Inside allOf/anyOf/oneOf/not (`junctor`) the
    schema only validates values: no unknown-field rejection, no nullable."""
    if not isinstance(s, dict):
        return {}
    out = {}
    t = s.get('type')
    nullable = s.get('nullable') is True and not junctor
    preserve = s.get('x-kubernetes-preserve-unknown-fields') is True
    embedded = s.get('x-kubernetes-embedded-resource') is True
    if s.get('x-kubernetes-int-or-string') is True:
        types = ['integer', 'string']
    elif t:
        types = [t]
    else:
        types = []
    if types:
        if nullable:
            types.append('null')
        out['type'] = types[0] if len(types) == 1 else types
    for kw in COPY_KEYWORDS:
        if kw in s:
            out[kw] = s[kw]
    # OpenAPI 3.0's boolean exclusiveMinimum/Maximum -> draft 2020-12's numeric ones.
    for bound, excl in (('minimum', 'exclusiveMinimum'), ('maximum', 'exclusiveMaximum')):
        if bound in s:
            if s.get(excl) is True:
                out[excl] = s[bound]
            else:
                out[bound] = s[bound]
    if 'enum' in s:
        out['enum'] = list(s['enum'])
        if nullable and None not in out['enum']:
            out['enum'].append(None)
    props = s.get('properties')
    if isinstance(props, dict):
        out['properties'] = {k: convert_schema(v, junctor) for k, v in props.items()}
    if isinstance(s.get('items'), dict):
        out['items'] = convert_schema(s['items'], junctor)
    ap = s.get('additionalProperties')
    if isinstance(ap, dict):
        out['additionalProperties'] = convert_schema(ap, junctor)
    elif isinstance(ap, bool):
        out['additionalProperties'] = ap
    if embedded and not junctor:
        p = out.setdefault('properties', {})
        p['apiVersion'] = {'type': 'string', 'minLength': 1}
        p['kind'] = {'type': 'string', 'minLength': 1}
        p['metadata'] = {'$ref': '#/$defs/' + OBJECT_META}
        out['required'] = sorted(set(out.get('required', [])) | {'apiVersion', 'kind'})
    if (not junctor and not preserve and ap is None
            and (t == 'object' or isinstance(props, dict) or embedded)):
        out['additionalProperties'] = False  # Kubernetes prunes these: we report them
    for j in ('allOf', 'anyOf', 'oneOf'):
        if isinstance(s.get(j), list):
            out[j] = [convert_schema(x, junctor=True) for x in s[j]]
    if isinstance(s.get('not'), dict):
        out['not'] = convert_schema(s['not'], junctor=True)
    return out


def _list_type(validator, value, instance, schema):
    if not isinstance(instance, list):
        return
    if value == 'set':
        seen = set()
        for item in instance:
            key = json.dumps(item, sort_keys=True)
            if key in seen:
                yield jsonschema.ValidationError(
                    'duplicate entry %s (x-kubernetes-list-type: set)' % short(item))
            seen.add(key)
    elif value == 'map':
        keys = schema.get('x-kubernetes-list-map-keys') or []
        seen = set()
        for item in instance:
            if not isinstance(item, dict):
                continue
            key = json.dumps([item.get(k) for k in keys])
            if key in seen:
                yield jsonschema.ValidationError(
                    'duplicate entry with %s (x-kubernetes-list-type: map)'
                    % ', '.join('%s=%s' % (k, short(item.get(k))) for k in keys))
            seen.add(key)


CRValidator = jsonschema.validators.extend(
    jsonschema.validators.Draft202012Validator, {'x-kubernetes-list-type': _list_type})


def apply_defaults_and_find_cel(obj, s, path, cel):
    """Apply `default`s to absent fields (the API server defaults before it validates) and
    collect the CEL rules of every schema node the object has a value for."""
    if not isinstance(s, dict):
        return
    for rule in s.get('x-kubernetes-validations') or []:
        cel.append((path, rule.get('rule', ''),
                    rule.get('message') or rule.get('messageExpression', '')))
    if isinstance(obj, dict):
        props = s.get('properties') or {}
        for k, ps in props.items():
            if (k not in obj and isinstance(ps, dict) and 'default' in ps
                    and not (path == () and k == 'metadata')):
                obj[k] = copy.deepcopy(ps['default'])
        ap = s.get('additionalProperties')
        for k, v in obj.items():
            if path == () and k == 'metadata':
                continue
            if k in props:
                apply_defaults_and_find_cel(v, props[k], path + (k,), cel)
            elif isinstance(ap, dict):
                apply_defaults_and_find_cel(v, ap, path + (k,), cel)
    elif isinstance(obj, list) and isinstance(s.get('items'), dict):
        for i, v in enumerate(obj):
            apply_defaults_and_find_cel(v, s['items'], path + (i,), cel)


class CrdVersion:
    def __init__(self, crd_name, source, group, kind, version, served, schema):
        self.crd_name, self.source = crd_name, source
        self.group, self.kind, self.version, self.served = group, kind, version, served
        self.schema = schema or {}
        self._validator = None

    def validator(self, meta_defs):
        if self._validator is None:
            root = convert_schema(self.schema)
            root['$schema'] = 'https://json-schema.org/draft/2020-12/schema'
            root['$defs'] = meta_defs
            props = root.setdefault('properties', {})
            # apiVersion, kind and metadata are always kept at the root, declared or not (kube-rs
            # generated CRDs, like capwin's, declare only spec and status)
            props.setdefault('apiVersion', {'type': 'string'})
            props.setdefault('kind', {'type': 'string'})
            own_meta = (self.schema.get('properties') or {}).get('metadata')
            meta = {'$ref': '#/$defs/' + OBJECT_META}
            if isinstance(own_meta, dict) and own_meta.get('properties'):
                # a CRD may only constrain metadata.name / generateName: value checks on top of ObjectMeta
                meta['allOf'] = [convert_schema(own_meta, junctor=True)]
            props['metadata'] = meta
            self._validator = CRValidator(root)
        return self._validator


class CrdIndex:
    def __init__(self):
        self.versions = {}  # (group, version, kind) -> CrdVersion

    def add_crd(self, crd, source, override=True):
        try:
            spec = crd['spec']
            group, kind = spec['group'], spec['names']['kind']
            name = (crd.get('metadata') or {}).get('name', '?')
            for v in spec.get('versions') or []:
                schema = ((v.get('schema') or {}).get('openAPIV3Schema'))
                key = (group, v['name'], kind)
                if override or key not in self.versions:
                    self.versions[key] = CrdVersion(name, source, group, kind, v['name'],
                                                    v.get('served') is True, schema)
        except (KeyError, TypeError):
            pass  # a malformed CRD is reported when it is itself validated

    def load_path(self, path, explicit):
        if os.path.isdir(path):
            files = sorted(os.path.join(path, f) for f in os.listdir(path)
                           if f.endswith(('.yaml', '.yml')))
        elif os.path.isfile(path):
            files = [path]
        elif explicit:
            raise UsageError('--crds %s: no such file or directory' % path)
        else:
            print('validate.py: note: default CRD directory %s not found; its kinds will be '
                  'unknown' % path, file=sys.stderr)
            return
        for f in files:
            with open(f, encoding='utf-8') as fh:
                text = fh.read()
            for _, obj, _, err in load_documents(text):
                if err:
                    raise UsageError('--crds %s: YAML error: %s' % (f, err))
                if is_crd(obj):
                    self.add_crd(to_json_like(obj), f, override=False)

    def lookup(self, group, version, kind):
        return self.versions.get((group, version, kind))

    def versions_of(self, group, kind):
        return [v for k, v in sorted(self.versions.items()) if k[0] == group and k[2] == kind]

    def kinds_of_group(self, group):
        return {k[2] for k in self.versions if k[0] == group}


def is_crd(obj):
    return (isinstance(obj, dict) and obj.get('kind') == 'CustomResourceDefinition'
            and obj.get('apiVersion') == 'apiextensions.k8s.io/v1')


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

def split_api_version(av):
    if '/' in av:
        group, _, version = av.partition('/')
        return group, version
    return '', av


def validate_object(obj, builtins, crds, meta_defs, verbose_notes, cel):
    """-> [(path tuple, message)]; appends what it checked against to verbose_notes and the
    CEL rules it could not evaluate to cel as (path, rule, message)."""
    problems = []
    for field in ('apiVersion', 'kind'):
        if field not in obj or obj[field] in (None, ''):
            problems.append(((field,), 'required field is missing'))
        elif not isinstance(obj[field], str):
            problems.append(((field,), 'invalid type: got %s %s, want string'
                             % (JSON_TYPE.get(type(obj[field]), '?'), short(obj[field]))))
    if problems:
        return problems
    av, kind = obj['apiVersion'], obj['kind']
    if av.count('/') > 1 or av.startswith('/') or av.endswith('/'):
        return [(('apiVersion',), '%s is not GROUP/VERSION or VERSION' % json.dumps(av))]
    group, version = split_api_version(av)

    if (group, version, kind) in builtins.gvks:
        problems.extend(builtins.validate(obj))
        problems.extend(check_object_meta(obj.get('metadata'), custom_resource=False))
        verbose_notes.append('checked: built-in %s %s, Kubernetes %s schema (kubernetes-validate %s)'
                             % (av, kind, builtins.version, kubernetes_validate.__version__))
        return problems

    crd = crds.lookup(group, version, kind)
    if crd is not None and crd.served:
        work = copy.deepcopy(obj)
        apply_defaults_and_find_cel(work, crd.schema, (), cel)
        problems.extend(describe_errors(list(crd.validator(meta_defs).iter_errors(work))))
        problems.extend(check_object_meta(obj.get('metadata'), custom_resource=True))
        verbose_notes.append('checked: %s %s against CRD %s (%s)'
                             % (av, kind, crd.crd_name, os.path.relpath(crd.source)))
        return problems

    # Not servable: explain why.
    crd_versions = crds.versions_of(group, kind)
    builtin_versions = sorted(v for v, k in builtins.kinds_of_group(group) if k == kind)
    if crd_versions:
        served = [v.version for v in crd_versions if v.served]
        what = 'not served' if crd is not None else 'not defined'
        return [(('apiVersion',), 'version %s of %s is %s by CRD %s (served: %s)'
                 % (version, kind, what, crd_versions[0].crd_name, ', '.join(served) or 'none'))]
    if builtin_versions:
        return [(('apiVersion',), '%s %s is not served by Kubernetes %s (available: %s)'
                 % (av, kind, builtins.version,
                    ', '.join('%s/%s' % (group, v) if group else v for v in builtin_versions)))]
    candidates = crds.kinds_of_group(group) | {k for _, k in builtins.kinds_of_group(group)}
    hint = difflib.get_close_matches(kind, sorted(candidates), n=1)
    return [(('kind',), 'unknown kind %s in %s: not a built-in kind of Kubernetes %s and no CRD '
             'defines it%s' % (json.dumps(kind), json.dumps(av), builtins.version,
                               '; did you mean %s?' % json.dumps(hint[0]) if hint else ''))]


def nonempty_str(x):
    return x if isinstance(x, str) and x else '?'


def expand_inputs(paths):
    out = []
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                out.extend(os.path.join(root, f) for f in sorted(files)
                           if f.endswith(('.yaml', '.yml')))
        else:
            out.append(p)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(
        description='Validate Kubernetes manifests: built-in kinds with kubernetes-validate, '
                    'custom resources against their CRD openAPIV3Schema.')
    ap.add_argument('--k8s-version', default='1.34',
                    help='Kubernetes release whose built-in schemas are used (default 1.34)')
    ap.add_argument('--crds', action='append', metavar='DIR',
                    help='CRD directory or file; repeatable (default: %s)' % ', '.join(DEFAULT_CRDS))
    ap.add_argument('--vars', metavar='FILE',
                    help='KEY=VALUE lines substituted for clusterctl ${KEY} variables')
    ap.add_argument('--default-vars', action='store_true',
                    help='substitute each ${NAME} without a value by its :=default or a placeholder')
    ap.add_argument('-v', '--verbose', action='store_true',
                    help='also print what each document was validated against, and the CEL rules '
                         'that were not evaluated')
    ap.add_argument('files', nargs='+', metavar='FILE',
                    help='YAML file, directory (recursed) or - for standard input')
    args = ap.parse_args(argv)

    try:
        builtins = Builtins(args.k8s_version)
        crds = CrdIndex()
        for path in (args.crds or DEFAULT_CRDS):
            crds.load_path(path, explicit=bool(args.crds))
        values = read_vars_file(args.vars) if args.vars else {}
    except (UsageError, OSError, UnicodeDecodeError) as e:
        print('validate.py: error: %s' % e, file=sys.stderr)
        return 2
    substituting = bool(args.vars) or args.default_vars
    meta_defs = builtins.object_meta_defs()

    files = expand_inputs(args.files)
    parsed = []  # (file, [(idx, obj, duplicates, error)] or None if unreadable, read error)
    for f in files:
        try:
            if f == '-':
                text = sys.stdin.read()
            else:
                with open(f, encoding='utf-8') as fh:
                    text = fh.read()
        except (OSError, UnicodeDecodeError) as e:
            parsed.append((f, None, str(e)))
            continue
        if substituting:
            text = substitute(text, values, args.default_vars, args.k8s_version)
        elif VAR_RE.search(text):
            print('validate.py: note: %s has clusterctl ${VARIABLES}; they are validated as literal '
                  'text (pass --default-vars or --vars FILE to substitute them)' % f, file=sys.stderr)
        docs = list(load_documents(text))
        parsed.append((f, docs, None))
        for _, obj, _, err in docs:  # CRDs shipped alongside their CRs define them too
            if not err and is_crd(obj):
                crds.add_crd(to_json_like(obj), f, override=True)

    nerrors = ndocs = ncel = 0

    def report(line):
        nonlocal nerrors
        nerrors += 1
        print(line)

    for f, docs, read_error in parsed:
        if docs is None:
            report('%s#0 -: (file): cannot read: %s' % (f, read_error))
            continue
        for idx, obj, dups, err in docs:
            if err:
                report('%s#%d -: (yaml): %s' % (f, idx, err))
                continue
            if obj is None:
                continue
            ndocs += 1
            if not isinstance(obj, dict):
                t = JSON_TYPE.get(type(obj), type(obj).__name__)
                report('%s#%d -: (root): document is %s %s, not a Kubernetes object'
                       % (f, idx, 'an' if t[0] in 'aeiou' else 'a', t))
                continue
            obj = to_json_like(obj)
            meta = obj.get('metadata') if isinstance(obj.get('metadata'), dict) else {}
            head = '%s#%d %s/%s' % (f, idx, nonempty_str(obj.get('kind')), nonempty_str(meta.get('name')))
            found = ['(line %d): duplicate key %s (the last one silently wins)' % (line, json.dumps(key))
                     for key, line in dups]
            if substituting:
                for path, ref in find_unresolved(obj):
                    found.append('%s: variable %s has no value (give it in --vars FILE, or use '
                                 '--default-vars)' % (fmt_path(path), ref))
            notes, cel = [], []
            for path, msg in validate_object(obj, builtins, crds, meta_defs, notes, cel):
                found.append('%s: %s' % (fmt_path(path), msg))
            for line in dict.fromkeys(found):  # de-duplicated, in order
                report('%s: %s' % (head, line))
            ncel += len(cel)
            if args.verbose:
                for n in notes:
                    print('%s: %s' % (head, n))
                for path, rule, msg in cel:
                    print('%s: %s: CEL rule not evaluated: %s%s'
                          % (head, fmt_path(path), rule, ' (%s)' % msg if msg else ''))

    summary = 'manifests: %d documents in %d files, %d errors' % (ndocs, len(files), nerrors)
    if ncel:
        summary += ' (%d CEL rules not evaluated%s)' % (ncel, '' if args.verbose else '; -v lists them')
    print(summary)
    return 1 if nerrors else 0


if __name__ == '__main__':
    sys.exit(main())
