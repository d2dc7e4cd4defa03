"""Which SQL a read-only port runs: one read of the spendstream database, nothing else.

The embedded ClickHouse runs inside the sink's process with the sink's file access, so
the query port must not become a way to read or write the host's files, reach the
network, or change the engine's state. Two layers:

1. The reader has its own chDB session with ``readonly=1``: no writes, no DDL, no
   ``SET``, no settings in queries, and the table functions that reach files, the network
   or other servers (``file``, ``url``, ``s3``, ``remote``, ``mysql``, ...) are refused by
   ClickHouse itself.
2. This guard, because ``readonly=1`` still allows ``SELECT file('/etc/passwd')``,
   ``SELECT ... INTO OUTFILE``, ``KILL QUERY``, several statements in one request, and
   reads of other databases (``system``, ``merge(...)``). The statement is parsed by
   ClickHouse's own parser twice without running it: ``formatQuerySingleLine`` (the SQL
   passed as a parameter, never spliced into a statement) refuses multi-statements and
   yields the canonical text, and ``EXPLAIN AST`` of that text gives the syntax tree this
   module checks against allow-lists. The canonical text is what then runs, so the
   statement checked is the statement executed.

Allowed: ``SELECT`` (with ``WITH``, ``UNION``, joins, subqueries, window functions),
``DESCRIBE`` and ``SHOW TABLES``; tables of the spendstream database only; the table
functions in ``TABLE_FUNCTIONS``; every scalar function except those in ``DENIED_FUNCTIONS``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .errors import QueryRefused

#: Syntax-tree nodes a read may contain (ClickHouse's IAST ids in EXPLAIN AST).
NODE_KINDS = frozenset(
    {
        "SelectWithUnionQuery", "SelectIntersectExceptQuery", "SelectQuery", "ExpressionList",
        "Literal", "Identifier", "Function", "Asterisk", "QualifiedAsterisk",
        "ColumnsRegexpMatcher", "ColumnsListMatcher", "QualifiedColumnsRegexpMatcher",
        "QualifiedColumnsListMatcher", "ColumnsTransformerList", "ColumnsExceptTransformer",
        "ColumnsReplaceTransformer", "ColumnsApplyTransformer", "ColumnsReplaceTransformer::Replacement",
        "TablesInSelectQuery", "TablesInSelectQueryElement", "TableExpression",
        "TableIdentifier", "TableJoin", "ArrayJoin", "Subquery", "WithElement",
        "OrderByElement", "WindowDefinition", "WindowListElement", "QueryParameter",
        "InterpolateElement", "SampleRatio", "DataType", "NameTypePair", "LimitByElement",
        "DescribeQuery", "ShowTables",
    }
)  # fmt: skip
#: Statements a request may be.
STATEMENTS = frozenset({"SelectWithUnionQuery", "DescribeQuery", "ShowTables"})
#: Table functions that read nothing outside the query itself.
TABLE_FUNCTIONS = frozenset(
    {"numbers", "numbers_mt", "zeros", "zeros_mt", "values", "generate_series",
     "generateseries", "view"}
)  # fmt: skip
#: Scalar functions that read files, other databases or dictionaries, or stall the sink.
DENIED_FUNCTIONS = frozenset(
    {"file", "filesystemavailable", "filesystemcapacity", "filesystemunreserved",
     "catboostevaluate", "modelevaluate", "joinget", "joingetornull", "hascolumnintable",
     "sleep", "sleepeachrow", "getclienthttpheader", "input"}
)  # fmt: skip
DENIED_PREFIXES = ("dict",)
#: Functions whose second argument may name a table (``x IN db.table``).
SET_FUNCTIONS = frozenset(
    {"in", "notin", "globalin", "globalnotin", "nullin", "notnullin", "globalnullin",
     "globalnotnullin"}
)  # fmt: skip
_BARE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ALLOWED_TEXT = "only SELECT, DESCRIBE and SHOW TABLES on the spendstream tables may run here"


@dataclass
class AstNode:
    kind: str
    #: the rest of the EXPLAIN AST line: name, alias, child count
    text: str
    children: list[AstNode] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.text.split(" ", 1)[0] if self.text else ""

    def walk(self) -> Iterator[AstNode]:
        yield self
        for child in self.children:
            yield from child.walk()


def parse_explain_ast(lines: list[str]) -> AstNode:
    """The tree of ``EXPLAIN AST`` output; depth is the indentation (one space a level)."""
    root: AstNode | None = None
    stack: list[tuple[int, AstNode]] = []
    for line in lines:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip(" "))
        kind, _, text = line.strip().partition(" ")
        node = AstNode(kind, text)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            stack[-1][1].children.append(node)
        elif root is None:
            root = node
        else:
            raise QueryRefused("one statement per request")
        stack.append((depth, node))
    if root is None:
        raise QueryRefused("empty query")
    return root


@dataclass(frozen=True)
class ReadPolicy:
    """Checks a statement's syntax tree; ``database`` is the one database it may read."""

    database: str

    def check(self, root: AstNode, output_format: str = "Native") -> None:
        if root.kind not in STATEMENTS:
            raise QueryRefused(f"{_statement(root)} is refused: {ALLOWED_TEXT}")
        # the reader appends FORMAT <output_format>; it is the statement's last child
        body = root.children
        if body and body[-1].kind == "Identifier" and body[-1].name == output_format:
            body = body[:-1]
        if root.kind == "ShowTables" and any(c.kind != "Literal" for c in body):
            raise QueryRefused("SHOW TABLES lists this database only (no FROM)")
        for node in body:
            self._check_tree(node)
        if root.kind == "SelectWithUnionQuery":
            _check_union(root, body)

    def _check_tree(self, top: AstNode) -> None:
        for node in top.walk():
            if node.kind not in NODE_KINDS:
                raise QueryRefused(f"'{node.kind}' is not allowed: {ALLOWED_TEXT}")
            if node.kind == "SelectWithUnionQuery":
                _check_union(node, node.children)
            elif node.kind == "TableExpression":
                self._check_table_expression(node)
            elif node.kind == "Function":
                self._check_function(node)

    def _check_table_expression(self, node: AstNode) -> None:
        for child in node.children:
            if child.kind == "TableIdentifier":
                self._check_table(child)
            elif child.kind == "Function" and child.name.lower() not in TABLE_FUNCTIONS:
                raise QueryRefused(
                    f"table function {child.name}() is not allowed here (it can reach files, "
                    f"the network or other databases); allowed: {', '.join(sorted(TABLE_FUNCTIONS))}"
                )

    def _check_table(self, node: AstNode) -> None:
        name, _, rest = node.text.partition(" ")
        if rest and not rest.startswith("("):
            raise QueryRefused(f"table name '{node.text}' is not allowed here")
        database, dot, table = name.rpartition(".")
        if dot and (database != self.database or not _BARE_NAME.match(table)):
            raise QueryRefused(
                f"only tables of the '{self.database}' database may be read here, not '{name}'"
            )
        if not dot and not _BARE_NAME.match(table):
            raise QueryRefused(f"table name '{name}' is not allowed here")

    def _check_function(self, node: AstNode) -> None:
        name = node.name.lower()
        if name in DENIED_FUNCTIONS or name.startswith(DENIED_PREFIXES):
            raise QueryRefused(f"function {node.name}() is not allowed here")
        if name in SET_FUNCTIONS:
            for arg in (c for args in node.children for c in args.children[1:]):
                if arg.kind == "Identifier" and "." in arg.name:
                    self._check_table(AstNode("TableIdentifier", arg.text))


def _check_union(node: AstNode, body: list[AstNode]) -> None:
    """A SELECT's only part besides its selects is ours (the format): INTO OUTFILE and
    SETTINGS show up as further children."""
    if len(body) != 1 or body[0].kind != "ExpressionList":
        raise QueryRefused(f"INTO OUTFILE, FORMAT and SETTINGS clauses are refused: {ALLOWED_TEXT}")


def _statement(root: AstNode) -> str:
    words = re.findall(r"[A-Z][a-z]+", root.kind.replace("Query", ""))
    return " ".join(words).upper() or root.kind


@dataclass
class GuardedReader:
    """Runs one read through the guard. ``run`` is the session's query function:
    ``run(sql, parameters) -> rows``; it must be a ``readonly=1`` session (layer 1)."""

    policy: ReadPolicy
    run: Callable[[str, dict[str, object] | None], list[tuple[object, ...]]]

    def vet(self, sql: str, parameters: dict[str, object] | None = None) -> str:
        """The canonical text of ``sql`` once it passed the guard (what is then run)."""
        if not sql.strip():
            raise QueryRefused("empty query")
        rows = self.run("SELECT formatQuerySingleLine({q:String})", {"q": sql})
        canonical = str(rows[0][0])
        lines = [str(r[0]) for r in self.run(f"EXPLAIN AST {canonical}", parameters)]
        self.policy.check(parse_explain_ast(lines))
        return canonical
