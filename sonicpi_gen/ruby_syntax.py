"""Sonic Pi programs as Ruby parse trees: literals, their byte spans and what Sonic Pi does with them.

Built on tree-sitter's Ruby grammar (the `templatize` extra). The one entry point most
callers need is `find_literals(code)`: every number, symbol and plain string in the
program, with its byte span in the UTF-8 text and, where the parse tree tells, its
role: the note of a `play`, the sample of a `sample`, the value of an `amp:` option,
the beats of a `sleep`, the count of `4.times`, and so on. A literal whose role the
tree does not tell (an operand of arithmetic, an argument of an unknown function)
gets role None; callers leave those alone.

How a literal gets its role: from the literal we climb through the wrappers that keep
its value (a unary minus, an array or `ring`/`knit` element, `( ... )`, and methods
such as `.tick`, `.choose`, `.shuffle` that return elements of their receiver) to the
place where the value is used: a positional argument of a known function, the value
of an option pair (`cutoff: 80`), or the right side of `name = ...`, in which case
the role comes from how `name` is used elsewhere in the program (one hop, and only
when all its uses agree).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

# Roles of a literal (what Sonic Pi does with it).
LITERAL_ROLES = ("synth", "sample", "fx", "note", "chord", "scale", "option", "sleep",
                 "rhythm", "bpm", "seed", "repeat", "density")

# Functions that make a sound, and which positional argument carries which role.
# (function, argument index) -> role.
POSITIONAL_ROLES = {
    ("play", 0): "note", ("play_chord", 0): "note", ("play_pattern", 0): "note",
    ("play_pattern_timed", 0): "note", ("play_pattern_timed", 1): "rhythm",
    ("synth", 0): "synth", ("use_synth", 0): "synth", ("with_synth", 0): "synth",
    ("sample", 0): "sample", ("with_fx", 0): "fx",
    ("sleep", 0): "sleep", ("wait", 0): "sleep",
    ("use_bpm", 0): "bpm", ("with_bpm", 0): "bpm",
    ("use_random_seed", 0): "seed", ("with_random_seed", 0): "seed",
    ("density", 0): "density",
    ("chord", 0): "note", ("chord", 1): "chord", ("scale", 0): "note", ("scale", 1): "scale",
    ("note", 0): "note", ("chord_invert", 0): "note",
}
# Calls whose `key: value` pairs are options of a synth, a sample or an fx.
OPTION_CALLS = {
    "play": "synth", "play_chord": "synth", "play_pattern": "synth", "play_pattern_timed": "synth",
    "synth": "synth", "use_synth_defaults": "synth", "with_synth_defaults": "synth",
    "sample": "sample", "use_sample_defaults": "sample", "with_sample_defaults": "sample",
    "with_fx": "fx", "control": None,
}
# The roles of a value that lives in a list, when the list is used as one of these.
LIST_ROLES = {"sleep": "rhythm", "rhythm": "rhythm"}
# Methods whose result is one or more elements of their receiver (a list or ring).
ELEMENT_METHODS = frozenset({
    "tick", "look", "choose", "shuffle", "ring", "reverse", "mirror", "reflect", "pick",
    "rotate", "sort", "take", "drop", "butlast", "first", "last", "repeat", "stretch",
    "to_a", "min", "max", "sample",
})
# Functions whose positional arguments are the elements of the list they return.
LIST_FUNCTIONS = frozenset({"ring", "knit"})
# Functions that return elements of the list they are given: `choose([50, 55, 62])`.
PICK_FUNCTIONS = frozenset({"choose", "pick", "shuffle"})
# Sonic Pi's synth when a program never chooses one.
DEFAULT_SYNTH = "beep"

_DECIMAL_INT = re.compile(r"\d+")
_DECIMAL_FLOAT = re.compile(r"\d+\.\d+")


class RubySyntaxError(ValueError):
    """The program is not Ruby that tree-sitter can parse; the message says where."""


@dataclass(frozen=True)
class Owner:
    """Whose option a literal sets: kind 'synth', 'sample' or 'fx', and the name when known.

    `span` is the byte span of the symbol literal that names the synth or fx (so a
    caller can tie the option to a lifted name); None when the name is implicit
    (Sonic Pi's default synth) or unknown.
    """

    kind: str
    name: str | None
    span: tuple[int, int] | None = None


@dataclass(frozen=True)
class Literal:
    """One literal of a program.

    kind: 'integer', 'float', 'symbol' or 'string'.
    value: the number (negative when written `-x`), the symbol's name without its colon,
        or the string's content; None for forms this module does not read (1e3, 0x10, 1_000,
        strings with interpolation).
    text: the literal as written (what a template replaces); start/end: its byte span.
    role: one of LITERAL_ROLES, or None when the parse tree does not tell.
    call: the Sonic Pi function the literal feeds (`play`, `with_fx`, ...), or None.
    option: the option key when the literal is the value of `key: value`.
    owner: for options and notes, whose option or note it is (see Owner).
    in_list: the value is one element of a list or ring (a melody, a rhythm).
    scope: byte span of the innermost call with a `do ... end` block around the literal
        (a `live_loop`, `with_fx`, `4.times`...), None at the top level.
    """

    kind: str
    value: object
    text: str
    start: int
    end: int
    role: str | None = None
    call: str | None = None
    option: str | None = None
    owner: Owner | None = None
    in_list: bool = False
    scope: tuple[int, int] | None = None


@lru_cache(maxsize=1)
def _parser():
    try:
        import tree_sitter
        import tree_sitter_ruby
    except ImportError as err:
        raise ImportError(f"reading Ruby needs {err.name}: pip install 'sonicpi-gen[templatize]' "
                          "(scripts/setup.sh installs it)") from err
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_ruby.language()))


def parse(code: str):
    """Parse a program; return tree-sitter's tree, or raise RubySyntaxError naming the line."""
    tree = _parser().parse(code.encode())
    if tree.root_node.has_error:
        bad = _first_error(tree.root_node)
        line = bad.start_point[0] + 1 if bad is not None else "?"
        raise RubySyntaxError(f"Ruby syntax error near line {line} (tree-sitter)")
    return tree


def _first_error(node):
    if node.type == "ERROR" or node.is_missing:
        return node
    for child in node.children:
        found = _first_error(child)
        if found is not None:
            return found
    return None


def find_literals(code: str) -> list[Literal]:
    """Every literal of `code` in text order, with its role where the tree tells.

    Raises RubySyntaxError when tree-sitter cannot parse the program.
    """
    tree = parse(code)
    source = code.encode()
    nodes = [n for n in _walk(tree.root_node) if _is_literal(n)]
    var_roles = _variable_roles(tree.root_node, source)
    return [_literal(n, source, var_roles) for n in nodes]


def node_text(node, source: bytes) -> str:
    return source[node.start_byte:node.end_byte].decode()


def _walk(node):
    yield node
    for child in node.children:
        yield from _walk(child)


def _is_literal(node) -> bool:
    if node.type in ("integer", "float"):
        return not (node.parent is not None and node.parent.type == "unary"
                    and _is_negation(node.parent))
    if node.type == "unary":
        return _is_negation(node) and node.child_by_field_name("operand").type in ("integer", "float")
    if node.type == "simple_symbol":
        return True
    if node.type == "string":
        # A pair key written as a string ("cutoff": 80) is a key, not a value.
        return not (node.parent is not None and node.parent.type == "pair"
                    and node.parent.child_by_field_name("key") == node)
    return False


def _is_negation(unary) -> bool:
    op = unary.child_by_field_name("operator")
    return op is not None and op.type == "-"


def _value(node, source: bytes):
    text = node_text(node, source)
    if node.type == "unary":
        inner = _value(node.child_by_field_name("operand"), source)
        return -inner if inner is not None else None
    if node.type == "integer":
        return int(text) if _DECIMAL_INT.fullmatch(text) else None
    if node.type == "float":
        return float(text) if _DECIMAL_FLOAT.fullmatch(text) else None
    if node.type == "simple_symbol":
        return text[1:]
    if node.type == "string":
        parts = [c for c in node.children if c.type not in ('"', "'")]
        if len(parts) == 1 and parts[0].type == "string_content":
            return node_text(parts[0], source)
        return "" if not parts else None
    return None


def _kind(node) -> str:
    if node.type == "unary":
        return node.child_by_field_name("operand").type
    return {"simple_symbol": "symbol"}.get(node.type, node.type)


def _literal(node, source: bytes, var_roles: dict) -> Literal:
    role, call, option, call_node, owner_kind, in_list = _use(node, source, var_roles)
    owner = None
    if option is not None and owner_kind is not None:
        owner = _owner(call_node, owner_kind, source)
    elif role == "note" and call in ("play", "play_chord", "play_pattern", "play_pattern_timed"):
        owner = _owner(call_node, "synth", source)
    return Literal(_kind(node), _value(node, source), node_text(node, source), node.start_byte,
                   node.end_byte, role, call, option, owner, in_list, _scope(node))


def _scope(node) -> tuple[int, int] | None:
    while node.parent is not None:
        node = node.parent
        if node.type in ("do_block", "block") and node.parent is not None and node.parent.type == "call":
            return (node.parent.start_byte, node.parent.end_byte)
    return None


def _climb(node):
    """From a value, up through wrappers that keep it, to the outermost such expression.

    Returns (expression, in_list): in_list is True when the value became an element of a
    list on the way (so `sleep [0.25, 0.5].choose` makes 0.25 a rhythm value).
    """
    in_list = False
    while node.parent is not None:
        parent = node.parent
        if parent.type == "array":
            in_list = True
        elif parent.type == "parenthesized_statements" and parent.named_child_count == 1:
            pass
        elif parent.type == "argument_list" and _is_list_function(parent.parent, parent):
            in_list = True
            parent = parent.parent
        elif parent.type == "argument_list" and _is_list_function(parent.parent, parent, PICK_FUNCTIONS):
            parent = parent.parent
        elif (parent.type == "call" and parent.child_by_field_name("receiver") == node
              and _method(parent) in ELEMENT_METHODS):
            pass
        elif parent.type == "element_reference" and parent.child_by_field_name("object") == node:
            pass
        else:
            break
        node = parent
    return node, in_list


def _is_list_function(call, args, names=LIST_FUNCTIONS) -> bool:
    return (call is not None and call.type == "call" and call.child_by_field_name("receiver") is None
            and _method(call) in names and call.child_by_field_name("arguments") == args)


def _method(call) -> str | None:
    method = call.child_by_field_name("method")
    return method.text.decode() if method is not None else None


def _use(node, source: bytes, var_roles: dict):
    """(role, call name, option key, call node, owner kind) for a literal node."""
    # `4.times do`: the receiver of .times is a repetition count.
    if (node.parent is not None and node.parent.type == "call"
            and node.parent.child_by_field_name("receiver") == node and _method(node.parent) == "times"):
        return "repeat", "times", None, node.parent, None, False
    expr, in_list = _climb(node)
    parent = expr.parent
    if parent is None:
        return None, None, None, None, None, in_list
    if parent.type == "pair" and parent.child_by_field_name("value") == expr:
        key = _pair_key(parent, source)
        args = parent.parent
        call = args.parent if args is not None and args.type == "argument_list" else None
        name = _method(call) if call is not None and call.type == "call" else None
        if key is None or name not in OPTION_CALLS or in_list:
            return None, name, key, call, None, in_list
        role = "note" if key == "note" else "option"
        return role, name, key, call, OPTION_CALLS[name], in_list
    if parent.type == "argument_list" and parent.parent is not None and parent.parent.type == "call":
        call = parent.parent
        if call.child_by_field_name("receiver") is not None:
            return None, _method(call), None, call, None, in_list
        index = [c for c in parent.named_children if c.type != "pair"].index(expr) \
            if expr.type != "pair" else None
        role = POSITIONAL_ROLES.get((_method(call), index))
        return _in_list(role, in_list), _method(call), None, call, None, in_list
    if parent.type == "assignment" and parent.child_by_field_name("right") == expr:
        left = parent.child_by_field_name("left")
        if left is not None and left.type == "identifier":
            role = var_roles.get(node_text(left, source))
            return _in_list(role, in_list), None, None, None, None, in_list
    return None, None, None, None, None, in_list


def _in_list(role, in_list: bool):
    if role is None:
        return None
    return LIST_ROLES.get(role, role) if in_list else role


def _pair_key(pair, source: bytes) -> str | None:
    key = pair.child_by_field_name("key")
    if key is None:
        return None
    if key.type == "hash_key_symbol":
        return node_text(key, source)
    if key.type == "simple_symbol":
        return node_text(key, source)[1:]
    return None


def _variable_roles(root, source: bytes) -> dict:
    """name -> role for local variables used in exactly one role (`notes = ...; play notes.tick`)."""
    uses: dict[str, set] = {}
    for node in _walk(root):
        if node.type != "identifier" or node.parent is None:
            continue
        if node.parent.type == "assignment" and node.parent.child_by_field_name("left") == node:
            continue
        if node.parent.type == "call" and node.parent.child_by_field_name("method") == node:
            continue
        expr, in_list = _climb(node)
        parent = expr.parent
        role = None
        if parent is not None and parent.type == "argument_list" and parent.parent is not None \
                and parent.parent.type == "call" and expr.type != "pair":
            call = parent.parent
            if call.child_by_field_name("receiver") is None:
                index = [c for c in parent.named_children if c.type != "pair"].index(expr)
                role = POSITIONAL_ROLES.get((_method(call), index))
        uses.setdefault(node_text(node, source), set()).add(role)
    return {name: roles.pop() for name, roles in uses.items() if len(roles) == 1 and None not in roles}


def _owner(call, kind: str, source: bytes) -> Owner | None:
    """The synth, fx or sample whose option (or note) a call sets."""
    if call is None:
        return None
    name = _method(call)
    if kind == "sample":
        return Owner("sample", "sample")
    if name in ("with_fx", "synth"):
        first = _first_arg(call)
        if first is not None and first.type == "simple_symbol":
            return Owner(kind, node_text(first, source)[1:], (first.start_byte, first.end_byte))
        return Owner(kind, None)
    if name == "control":
        return None
    return _active_synth(call, source)


def _first_arg(call):
    args = call.child_by_field_name("arguments")
    if args is None:
        return None
    positional = [c for c in args.named_children if c.type != "pair"]
    return positional[0] if positional else None


def _active_synth(node, source: bytes) -> Owner:
    """The synth in force at `node`, read lexically: the nearest `use_synth` before it in
    its block or an enclosing one, or an enclosing `with_synth ... do`; else :beep.

    Known limit: a function body (`define`) sees the synth of its definition site, not
    of its callers; a non-literal synth (`use_synth synths.choose`) gives name None.
    """
    child, parent = node, node.parent
    while parent is not None:
        if parent.type == "call" and _method(parent) == "with_synth" \
                and parent.child_by_field_name("block") == child:
            return _synth_of(parent, source)
        siblings = list(parent.named_children)
        if parent.type in ("program", "body_statement", "block_body", "then", "else", "begin_block"):
            for sibling in reversed(siblings[:siblings.index(child)]):
                if sibling.type == "call" and _method(sibling) == "use_synth" \
                        and sibling.child_by_field_name("receiver") is None:
                    return _synth_of(sibling, source)
        child, parent = parent, parent.parent
    return Owner("synth", DEFAULT_SYNTH)


def _synth_of(call, source: bytes) -> Owner:
    first = _first_arg(call)
    if first is not None and first.type == "simple_symbol":
        return Owner("synth", node_text(first, source)[1:], (first.start_byte, first.end_byte))
    return Owner("synth", None)


def option_uses(code: str) -> list[tuple[Owner | None, str]]:
    """Every `key: value` option given to a synth, sample or fx call, literal value or not,
    as (owner, key) in text order; owner None where the tree does not tell (`control`)."""
    tree = parse(code)
    source = code.encode()
    found = []
    for node in _walk(tree.root_node):
        if node.type != "pair" or node.parent is None or node.parent.type != "argument_list":
            continue
        call = node.parent.parent
        name = _method(call) if call is not None and call.type == "call" else None
        key = _pair_key(node, source)
        if name in OPTION_CALLS and key is not None:
            kind = OPTION_CALLS[name]
            found.append((_owner(call, kind, source) if kind else None, key))
    return found


def calls(code: str) -> list[tuple[str, int, int]]:
    """Every call of a function without a receiver, as (name, start byte, end byte), in
    text order: the structure of a program (which Sonic Pi functions it uses, nested how)."""
    tree = parse(code)
    return [(_method(n), n.start_byte, n.end_byte) for n in _walk(tree.root_node)
            if n.type == "call" and n.child_by_field_name("receiver") is None and _method(n)]


def enclosing_blocks(code: str, start: int) -> list[tuple[str | None, int, int]]:
    """The `do ... end` / `{ ... }` blocks around byte `start`, innermost first, as
    (the call that owns the block, e.g. 'live_loop', start byte, end byte)."""
    tree = parse(code)
    node = tree.root_node.descendant_for_byte_range(start, start)
    found = []
    while node is not None:
        if node.type in ("do_block", "block") and node.parent is not None and node.parent.type == "call":
            found.append((_method(node.parent), node.parent.start_byte, node.parent.end_byte))
        node = node.parent
    return found
