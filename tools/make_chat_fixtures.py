#!/usr/bin/env python3
"""Expected outputs of the chat-template fixtures (tests/golden/chat), rendered the way
transformers' apply_chat_template renders them.

Each template in tests/golden/chat/templates/*.jinja is rendered over the conversations below
with transformers' own machinery (transformers.utils.chat_template_utils.render_jinja_template:
its jinja2 ImmutableSandboxedEnvironment with trim_blocks/lstrip_blocks, its tojson,
raise_exception and namespace), no PyTorch needed. The exact variables the template saw (the
messages after transformers' own processing, tools, documents, add_generation_prompt and the
special tokens) are captured and written next to the output, so the C test
(workers/tokenizer/chat_tmpl_test.c) renders the same context with no Python at all.

    python3 -m venv /tmp/v && /tmp/v/bin/pip install transformers jinja2
    /tmp/v/bin/python tools/make_chat_fixtures.py        # rewrites tests/golden/chat/cases.json
"""
import copy
import json
import os
import sys

import jinja2
import transformers
from transformers.utils import chat_template_utils as ctu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "golden", "chat")

# Special tokens each model's tokenizer_config.json names (what apply_chat_template passes on
# as template variables). Qwen3 has no bos_token (None).
MODELS = {
    "granite-4.0-h-micro": {"bos_token": "<|end_of_text|>", "eos_token": "<|end_of_text|>"},
    "qwen3": {"bos_token": None, "eos_token": "<|im_end|>"},
    "gemma-3-it": {"bos_token": "<bos>", "eos_token": "<eos>"},
    "mistral-7b-instruct-v0.3": {"bos_token": "<s>", "eos_token": "</s>"},
    "openhermes-2.5-chatml": {"bos_token": "<s>", "eos_token": "<|im_end|>"},
    "recurd-default": {"bos_token": "", "eos_token": ""},
}

TRICKY = 'Quotes "double" and \'single\', a backslash \\ and a tab\t.\nSecond line: é, 中文, 😀, \u2028.'

CONVERSATIONS = {
    "system_user": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello!"},
    ],
    "user_only": [{"role": "user", "content": "What is 2+2?"}],
    "multi_turn": [
        {"role": "system", "content": "Answer briefly.\n"},
        {"role": "user", "content": TRICKY},
        {"role": "assistant", "content": "  Noted: {{ not a template }} {% neither %}  "},
        {"role": "user", "content": "And <|im_end|> [INST] in text?"},
    ],
    "multi_turn_no_system": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
    "content_parts": [
        {"role": "system", "content": [{"type": "text", "text": "Be terse."}]},
        {"role": "user", "content": [{"type": "text", "text": "First part."},
                                     {"type": "text", "text": "Second part."}]},
    ],
    "empty_content": [
        {"role": "user", "content": ""},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": " "},
    ],
    "thinking": [
        {"role": "user", "content": "Think first."},
        {"role": "assistant", "content": "<think>\nLet me see.\n</think>\n\nIt is 4."},
        {"role": "user", "content": "Again?"},
    ],
    # Role-order errors: raise_exception in the templates that check alternation.
    "bad_alternation": [
        {"role": "user", "content": "One"},
        {"role": "user", "content": "Two"},
    ],
}

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name, e.g. \"Zürich\""},
                           "days": {"type": "integer", "minimum": 1, "maximum": 7.5}},
            "required": ["city"],
        },
    },
}]

TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Zürich?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call12345", "type": "function",
         "function": {"name": "get_weather", "arguments": {"city": "Zürich", "days": 2}}}]},
    {"role": "tool", "tool_call_id": "call12345", "content": "{\"temp_c\": 21.5, \"sky\": \"clear\"}"},
    {"role": "assistant", "content": "It is 21.5 °C and clear."},
    {"role": "user", "content": "Thanks"},
]

# Small templates for the language features real templates lean on (rendered by the same
# machinery; "template_text" instead of a template file). Printing a generator (map/select
# without |list) is left out: jinja2 prints its Python repr.
FEATURE_CTX = {"messages": CONVERSATIONS["multi_turn"]}
FEATURES = {
    "whitespace_control": "  {% if true %}\n    x\n  {% endif %}\n  y\n{#- c -#}\n  {%- if 1 -%}\n z {%+ if 1 %}w{% endif +%}\n  {{ 'v' -}}  \n  u\n{% endif %}\n",
    "loop_vars": "{% for m in messages %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.previtem.role if not loop.first }}{{ loop.cycle('a', 'b') }};{% endfor %}",
    "for_if_else": "{% for m in messages if m.role == 'user' %}{{ loop.index }}/{{ loop.length }} {% endfor %}{% for x in [] %}no{% else %}empty{% endfor %}{% for x in [1, 2, 3, 4] %}{% if x == 2 %}{% continue %}{% endif %}{{ x }}{% if x == 3 %}{% break %}{% endif %}{% endfor %}",
    "namespace_scope": "{% set x = 1 %}{% set ns = namespace(n=0, s='') %}{% for m in messages %}{% set x = 2 %}{% set ns.n = ns.n + 1 %}{% set ns.s = ns.s ~ m.role[0] %}{% endfor %}{{ x }} {{ ns.n }} {{ ns.s }}",
    "arithmetic": "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 / 2 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 1.0 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1e-7 }} {{ 3 * 'ab' }} {{ 'ab' * 2 }} {{ true + 1 }} {{ 10 // 4.0 }} {{ 1 / 3 }} {{ 2.5e16 }} {{ 12345.678 }} {{ -0.0 }}",
    "comparisons": "{{ messages | length > 2 and messages[0].role == 'system' }} {{ not messages }} {{ 1 < 2 }} {{ 'a' < 'b' }} {{ [1] == [1] }} {{ 'x' in 'xyz' }} {{ 'q' not in ['a'] }} {{ 'role' in messages[0] }} {{ 1 == 1.0 }} {{ none == none }}",
    "strings": "{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'a b c'.split(' ', 1) }} [{{ '  xy '.strip() }}] {{ 'xxhixx'.strip('x') }} {{ '\\n\\nx\\n'.lstrip('\\n') }}{{ 'y\\n\\n'.rstrip() }} {{ 'Hello'.startswith('Hell') }} {{ 'abc'.endswith(('x', 'c')) }} {{ 'a-b-c'.replace('-', '+') }} {{ 'a-b-c'.replace('-', '', 1) }} {{ 'hello wORLD'.title() }} {{ 'ABC'.lower() }} {{ 'abc'.upper() }} {{ 'abc'.capitalize() }} {{ 'abcabc'.find('c') }} {{ 'abcabc'.count('b') }} {{ '-'.join(['x', 'y']) }}",
    "slices": "{{ messages[::-1] | map(attribute='role') | join(',') }} {{ messages[1:] | length }} {{ messages[:-1] | length }} {{ 'abc'[::-1] }} {{ 'héllo'[1:3] }} {{ 'héllo'[-1] }} {{ [1, 2, 3, 4, 5][1::2] }} {{ [1, 2, 3][5:] }} {{ (messages | last).content[:5] }}",
    "filters": "{{ '  t  ' | trim }}|{{ 'xyx' | trim('x') }}|{{ messages | length }}|{{ 'Ab' | upper }}{{ 'Ab' | lower }}|{{ undefined_var | default('d') }}|{{ '' | default('e', true) }}|{{ [1, 2] | join('+') }}|{{ 'a-b' | replace('-', '_') }}|{{ [3, 4] | first }}{{ [3, 4] | last }}|{{ 'ab' | list }}|{{ 5 | string ~ 'x' }}|{{ '42' | int + 1 }}{{ 'x' | int }}{{ 3.9 | int }}|{{ 'hello world-foo' | title }}|{{ 'abc' | capitalize }}|{{ '  a\\n\\n  b' | indent(2) }}|{{ '<a href=\"x\">' | e }}|{{ -3 | abs }}|{{ [1, 2, 3] | reverse | list }}|{{ [1, 2, 2, 1] | unique | list }}|{{ [1, 2, 3] | sum }}|{{ [3, 1, 2] | min }}{{ [3, 1, 2] | max }}|{{ 2.567 | round(2) }}|{{ 'a b  c' | wordcount }}|{{ {'b': 1, 'a': 2} | dictsort }}",
    "select_map": "{{ messages | selectattr('role', 'equalto', 'user') | list | length }} {{ messages | rejectattr('role', 'in', ['user', 'system']) | map(attribute='role') | list }} {{ messages | map(attribute='role') | map('upper') | list }} {{ [1, none, 2] | select | list }} {{ [1, 2, 3, 4] | select('odd') | list }} {{ [1, 2, 3, 4] | reject('even') | list }} {{ messages | selectattr('nope') | list }} {{ messages | map(attribute='nope', default='-') | list }}",
    "dicts": "{% for k, v in {'a': 1, 'b': [2]}.items() %}{{ k }}={{ v }};{% endfor %}{{ {'a': 1}.get('b', 'none') }} {{ {'a': 1}.get('a') }} {{ {'a': 1}.get('z') }} {{ {'z': 1, 'y': 2}.keys() | list }} {{ {'z': 1, 'y': 2}.values() | list }} {{ {'a': 1} | items | list }} {% for k in {'p': 1, 'q': 2} %}{{ k }}{% endfor %} {{ dict(a=1, b='x') }}",
    "tojson": "{{ messages | tojson }}|{{ messages[0] | tojson(indent=2) }}|{{ {'a': 1.5, 'b': [1, none, true, false], 'c': {}} | tojson }}|{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}|{{ {'a': [1, 2], 'e': []} | tojson(indent=4) }}|{{ {'a': 'é😀\\u0001'} | tojson(ensure_ascii=true) }}|{{ [1, 2] | tojson(separators=(',', ':')) }}|{{ 'x\\u2028\\u007f\\\\' | tojson }}",
    "repr": "{{ [1, 'a', none, true, 1.5, {'k': 'v'}] }} {{ \"it's\" }} {{ ['it\\'s', 'q\\\"', 'a\\nb\\\\'] }} {{ messages[0] }} {{ none }} {{ true }} {{ (1, 2) | list }}",
    "macros": "{% macro f(a, b='B', c=none) %}<{{ a }}{{ b }}{{ c }}>{% endmacro %}{{ f(1) }}{{ f(2, b=3) }}{{ f('x', 'y', 'z') }}{% macro rec(n) %}{{ n }}{% if n > 0 %}{{ rec(n - 1) }}{% endif %}{% endmacro %}{{ rec(3) }}",
    "scoping": "{% for x in [1, 2] %}{% if loop.first %}{% set y = 'a' %}{% endif %}[{{ y }}]{% endfor %}{% for m in messages %}{% macro g() %}{{ m.role }}{% endmacro %}{{ g() }}{% endfor %}{% set x = 1 %}{% macro h(x) %}{{ x }}{% endmacro %}{{ h(2) }}{{ x }}{% for x in [1, 2] %}{{ x }}{% set x = 9 %}{{ x }}{% endfor %}{% if true %}{% set w = 5 %}{% endif %}{{ w }}{% macro k() %}{{ z }}{% endmacro %}{% set z = 3 %}{{ k() }}",
    "block_set_ternary": "{% set content %}inner {{ 1 }}{% endset %}[{{ content }}] {{ 'a' if false }}|{{ 'a' if true else 'b' }}|{{ 'x' if none else 'y' if 0 else 'z' }}",
    "undefined": "[{{ nope }}]{{ nope is defined }}{{ nope is undefined }}{{ nope | length }}{% for x in nope %}never{% endfor %}{{ nope | default('dflt') }}{{ messages[0].nope is defined }}{{ messages[99] is defined }}{{ nope ~ 'cat' }}{{ not nope }}{{ nope == none }}",
    "tests": "{{ 1 is number }}{{ 1 is integer }}{{ 1.5 is float }}{{ true is boolean }}{{ 'a' is string }}{{ {} is mapping }}{{ [] is iterable }}{{ 'x' is sequence }}{{ none is none }}{{ 3 is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ 'a' is in 'cat' }}{{ 2 is eq 2 }}{{ 'ab' is lower }}{{ 'AB' is upper }}{{ true is true }}{{ false is false }}{{ 1 is true }}{{ f is callable }}{{ range is callable }}",
    "range_strings": "{{ range(3) | list }} {{ range(2, 10, 3) | list }} {{ range(5, 0, -2) | list }} {{ \"\\u00e9\\n\\t\\x41\" }}|{{ '\\q' }}|{{ 'a' 'b' }}",
    "raise": "{% if messages | length > 1 %}{{ raise_exception('Bad: ' ~ messages[0].role) }}{% endif %}",
    "attr_of_undefined": "{{ messages[0].nope.deeper }}",
    "type_error": "{{ 'a' + 1 }}",
    "syntax_error": "{% if x %}\n{{ 1 + }}\n",
}


def cases():
    for model in MODELS:
        for conv_name, conv in CONVERSATIONS.items():
            for agp in (False, True):
                yield model, conv_name, conv, {"add_generation_prompt": agp}
        yield model, "tools", TOOL_CONVERSATION, {"add_generation_prompt": True, "tools": TOOLS}
    yield "qwen3", "thinking_disabled", CONVERSATIONS["user_only"], {
        "add_generation_prompt": True, "enable_thinking": False}
    yield "granite-4.0-h-micro", "documents", CONVERSATIONS["user_only"], {
        "add_generation_prompt": True,
        "documents": [{"doc_id": 1, "title": "Notes", "text": "Line one\nLine two"}]}


# Random templates over the supported constructs (fixed seed), rendered by jinja2 too: a
# differential check of expressions, filters, tests, methods, loops and whitespace control.
# Cases whose jinja2 result hits a documented difference (workers/tokenizer/README.md) are
# skipped: Python %-formatting, ordering comparisons of lists/dicts, unhashable `in`,
# printing a generator.
RANDOM_SEED, RANDOM_COUNT = 20261206, 300
SKIP_MARKERS = ("generator object", "not all arguments converted", "unhashable",
                "not supported between instances of 'list'", "not supported between instances of 'dict'",
                "format", "SyntaxWarning")


def random_templates():
    import random
    r = random.Random(RANDOM_SEED)
    atoms = ["1", "0", "-3", "2.5", "'ab'", "''", "'A b'", "none", "true", "false", "[1, 2]", "[]",
             "{'k': 'v'}", "messages", "messages[0]", "messages[-1].content", "messages[1]['role']",
             "m", "x", "'é中'", "messages | length", "ns.a", "loop_var"]
    binops = ["+", "-", "*", "//", "~", "==", "!=", "<", ">=", "and", "or", "in", "not in"]
    filters = ["length", "trim", "upper", "lower", "string", "first", "last", "list", "tojson",
               "default('d')", "join(',')", "reverse | list", "int", "capitalize", "title",
               "items | list", "map(attribute='role') | list",
               "selectattr('role', 'equalto', 'user') | list", "unique | list", "e",
               "replace('a', 'b')", "tojson(indent=1)", "trim('a')", "wordcount"]
    tests = ["defined", "none", "string", "number", "mapping", "iterable", "sequence", "integer",
             "odd", "true", "undefined", "boolean"]
    methods = [".upper()", ".strip()", ".split()", ".startswith('a')", ".endswith('b')",
               ".replace('a', 'x')", ".lstrip('a')", ".title()", ".get('role')",
               ".items() | list", ".keys() | list", "[1:]", "[::-1]", "[0]", ".rstrip()",
               ".split('a')", ".find('b')", ".count('a')"]

    def expr(d=0):
        x = r.random()
        if d > 2 or x < 0.3:
            return r.choice(atoms)
        if x < 0.5:
            return "(%s %s %s)" % (expr(d + 1), r.choice(binops), expr(d + 1))
        if x < 0.65:
            return "(%s | %s)" % (expr(d + 1), r.choice(filters))
        if x < 0.75:
            return "(%s is %s%s)" % (expr(d + 1), r.choice(["", "not "]), r.choice(tests))
        if x < 0.85:
            return "(%s)%s" % (expr(d + 1), r.choice(methods))
        if x < 0.93:
            return "(%s if %s else %s)" % (expr(d + 1), expr(d + 1), expr(d + 1))
        return "(not %s)" % expr(d + 1)

    def sp():
        return r.choice(["", " ", "\n", "  \n ", "\n\n", "\t"])

    def ws():
        return r.choice(["", "-", "", "+"])

    def stmt(d):
        x = r.random()
        if d > 2 or x < 0.35:
            return sp() + "{{" + r.choice(["", "-"]) + " " + expr() + " " + r.choice(["", "-"]) + "}}" + sp()
        if x < 0.55:
            return (sp() + "{%" + ws() + " if " + expr() + " %}" + body(d) + "{% else " +
                    r.choice(["", "-"]) + "%}" + body(d) + "{%" + ws() + " endif %}" + sp())
        if x < 0.75:
            return (sp() + "{%" + ws() + " for loop_var in " +
                    r.choice(["messages", "[1, 2, 3]", "'abc'", "{'a': 1, 'b': 2}", "x", "range(3)"]) +
                    r.choice(["", " if loop_var"]) + " %}" + body(d) + "{{ loop.index }}{% endfor " +
                    r.choice(["", "-"]) + "%}" + sp())
        if x < 0.9:
            return sp() + "{% set ns.a = " + expr() + " %}" + sp()
        return sp() + "{#" + ws() + " c " + r.choice(["", "-"]) + "#}" + sp()

    def body(d):
        return "".join(stmt(d + 1) for _ in range(r.randint(1, 3)))

    for i in range(RANDOM_COUNT):
        yield "random_%03d" % i, "{% set ns = namespace(a=0) %}" + body(0)


RANDOM_CTX = {"messages": [{"role": "system", "content": " Sys\n"},
                           {"role": "user", "content": "Hi a b"},
                           {"role": "assistant", "content": "é"}],
              "m": {"a": [1, {"b": None}]}}


def feature_cases():
    for name, text in FEATURES.items():
        yield name, text


def render(src, messages, opts, specials):
    """Renders as transformers does; returns (context the template saw, output, error)."""
    compiled = ctu._compile_jinja_template(src)
    seen = {}
    real_render = compiled.render

    def capture(*args, **kwargs):
        seen.update(copy.deepcopy(kwargs))
        return real_render(*args, **kwargs)

    compiled.render = capture
    kw = dict(specials)
    kw.update({k: v for k, v in opts.items() if k not in ("tools", "documents", "add_generation_prompt")})
    try:
        out, _ = ctu.render_jinja_template(
            conversations=[copy.deepcopy(messages)], chat_template=src,
            tools=opts.get("tools"), documents=opts.get("documents"),
            add_generation_prompt=opts["add_generation_prompt"], **kw)
        return seen, out[0], None
    except jinja2.exceptions.TemplateError as e:  # raise_exception, undefined, syntax
        return seen, None, {"type": type(e).__name__, "message": str(e)}
    except Exception as e:  # a Python error inside the template (e.g. str + list)
        return seen, None, {"type": type(e).__name__, "message": str(e)}
    finally:
        compiled.render = real_render


def main():
    out = []
    for model, conv_name, conv, opts in cases():
        with open(os.path.join(GOLDEN, "templates", model + ".jinja"), encoding="utf-8") as f:
            src = f.read()
        ctx, text, err = render(src, conv, opts, MODELS[model])
        case = {"template": model, "conversation": conv_name,
                "add_generation_prompt": opts["add_generation_prompt"], "context": ctx}
        if err:
            case["error"] = err
        else:
            case["output"] = text
        out.append(case)
    for name, text in feature_cases():
        compiled = None
        try:
            compiled = ctu._compile_jinja_template(text)
            res = {"output": compiled.render(**copy.deepcopy(FEATURE_CTX))}
        except Exception as e:
            res = {"error": {"type": type(e).__name__, "message": str(e)}}
        out.append({"template_text": text, "conversation": name, "context": FEATURE_CTX, **res})
    import warnings
    skipped = 0
    for name, text in random_templates():
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            try:
                res = {"output": ctu._compile_jinja_template(text).render(**copy.deepcopy(RANDOM_CTX))}
            except Exception as e:
                res = {"error": {"type": type(e).__name__, "message": str(e)}}
        flat = json.dumps(res) + " ".join(str(x.message) for x in w)
        if any(m in flat for m in SKIP_MARKERS):
            skipped += 1
            continue
        out.append({"template_text": text, "conversation": name, "context": RANDOM_CTX, **res})
    print(f"random templates: {RANDOM_COUNT - skipped} kept, {skipped} skipped (documented differences)")
    meta = {"transformers": transformers.__version__, "jinja2": jinja2.__version__,
            "python": sys.version.split()[0], "generator": "tools/make_chat_fixtures.py"}
    with open(os.path.join(GOLDEN, "cases.json"), "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "cases": out}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    n_err = sum(1 for c in out if "error" in c)
    print(f"{len(out)} cases ({n_err} expected errors) -> tests/golden/chat/cases.json")


if __name__ == "__main__":
    main()
