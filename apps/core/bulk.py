"""Many rows in one statement, without a model instance per row: the hot paths' inserts.

``rows_insert(model, rows)`` takes plain ``{attname: value}`` dicts (a field left out takes its
default; ``auto_now``/``auto_now_add`` fields get the same "now" for the whole call) and returns
the new primary keys in row order. On PostgreSQL the keys are taken from the table's sequence in
one query and the rows go in with one ``COPY`` (no SQL compiled per value, no quoting of tens of
thousands of parameters); elsewhere (SQLite) it is one ``bulk_create``. Either way it runs in the
caller's transaction, and both statements show in Django's query log like any other query.

``pks_reserve(model, n)`` hands out ``n`` primary keys before the rows exist (a walk that needs
its runs' ids before it writes them), and ``rows_insert_new(model, rows)`` inserts rows that carry
their keys, skipping those that break a unique constraint, and says which went in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cache
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import connections, models
from django.db.models import F
from django.db.models.lookups import In
from django.utils import timezone

_NOW = object()  # marker: the call's "now" (auto_now / auto_now_add)


@dataclass(frozen=True)
class _Column:
    attname: str
    column: str
    default: Any  # a value, a callable (called per row) or _NOW
    dump: Callable[[Any], Any] | None  # JSON fields: the text PostgreSQL parses


@cache
def _columns(model: type[models.Model]) -> tuple[_Column, ...]:
    columns = []
    for f in model._meta.concrete_fields:
        if f.primary_key:
            continue
        if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
            default: Any = _NOW
        elif f.has_default():
            default = f.default
        elif f.null:
            default = None
        else:
            default = f.get_default()
        dump = None
        if isinstance(f, models.JSONField):
            encoder = f.encoder

            def dump(value: Any, encoder: Any = encoder) -> Any:
                return None if value is None else json.dumps(value, cls=encoder)

        columns.append(_Column(f.attname, str(f.column), default, dump))
    return tuple(columns)


def rows_insert(
    model: type[models.Model], rows: Sequence[dict[str, Any]], *, using: str = "default", returning: bool = True
) -> list[int]:
    """Insert ``rows`` into ``model``'s table; returns their new pks in row order (``returning``
    False: nothing, and on PostgreSQL one statement less — the keys come from the column default).

    Every row is a dict of attname → value with the same keys (those of the first row).
    """
    if not rows:
        return []
    connection = connections[using]
    now = timezone.now()
    given = [c for c in _columns(model) if c.attname in rows[0]]
    absent = [c for c in _columns(model) if c.attname not in rows[0]]
    per_row = [c for c in absent if callable(c.default) and c.default is not _NOW]
    fixed = [c for c in absent if c not in per_row]
    fixed_values = [now if c.default is _NOW else c.default for c in fixed]
    if connection.vendor != "postgresql":
        constant = {c.attname: v for c, v in zip(fixed, fixed_values, strict=True)}
        objs = [model(**row, **constant, **{c.attname: c.default() for c in per_row}) for row in rows]
        model._default_manager.db_manager(using).bulk_create(objs, batch_size=500)
        return [obj.pk for obj in objs] if returning else []

    meta = model._meta
    pk_column = str(meta.pk.column)
    quote = connection.ops.quote_name
    fixed_dumped = [c.dump(v) if c.dump is not None else v for c, v in zip(fixed, fixed_values, strict=True)]
    plain_columns = [c for c in given if c.dump is None]
    dumped_columns = [c for c in given if c.dump is not None]
    plain = [c.attname for c in plain_columns]
    dumped = [(c.attname, c.dump) for c in dumped_columns if c.dump is not None]
    calls = [(c.default, c.dump) for c in per_row]
    order = [c.column for c in (*plain_columns, *dumped_columns, *per_row, *fixed)]
    with connection.cursor() as cursor:
        if returning:
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
                [meta.db_table, pk_column, len(rows)],
            )
            pks = [pk for (pk,) in cursor.fetchall()]
            order.insert(0, pk_column)
        else:
            pks = []
        sql = f"COPY {quote(meta.db_table)} ({', '.join(quote(name) for name in order)}) FROM STDIN"
        debug = getattr(cursor, "debug_sql", None)  # DEBUG / tests: logged like an execute()
        with (
            connection.wrap_database_errors,  # psycopg's errors as Django's (IntegrityError, OperationalError)
            debug(sql) if debug is not None else nullcontext(),
            cursor.cursor.copy(sql) as copy,
        ):
            write = copy.write_row
            for pk, row in zip(pks or [None] * len(rows), rows, strict=True):
                write(
                    ([pk] if returning else [])
                    + [row[a] for a in plain]
                    + [dump(row[a]) for a, dump in dumped]
                    + [call() if dump is None else dump(call()) for call, dump in calls]
                    + fixed_dumped
                )
    return pks


def rows_insert_keyed(
    model: type[models.Model],
    fixed: dict[str, Any],
    *,
    column: str,
    keys: Sequence[int],
    ignore_conflicts: bool = False,
    where: tuple[str, Sequence[Any]] | None = None,
    using: str = "default",
) -> list[int] | None:
    """PostgreSQL: one row per key in ``keys`` (``column``), every other field the same (``fixed``,
    else its default), in one ``INSERT … SELECT … FROM unnest(%s::bigint[])`` (one parameter for
    the keys: no SQL compiled per row); with ``ignore_conflicts`` rows that break a unique
    constraint are skipped (``ON CONFLICT DO NOTHING``); ``where`` (SQL, params) guards the whole
    insert (e.g. "the parent row is still live"). Returns the new rows' primary keys (in no
    particular order). ``None`` on other databases: the caller falls back to ``bulk_create``."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return None
    if not keys:
        return []
    now = timezone.now()
    quote = connection.ops.quote_name
    names: list[str] = []
    values: list[str] = []
    params: list[Any] = []
    for c in _columns(model):
        names.append(quote(c.column))
        if c.attname == column:
            values.append("k")
            continue
        if c.attname in fixed:
            value = fixed[c.attname]
        elif c.default is _NOW:
            value = now
        elif callable(c.default):
            value = c.default()
        else:
            value = c.default
        # typed: an untyped parameter in a SELECT list would be taken as text
        values.append(f"%s::{model._meta.get_field(c.attname).db_type(connection)}")
        params.append(c.dump(value) if c.dump is not None else value)
    meta = model._meta
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(names)}) "
        f"SELECT {', '.join(values)} FROM unnest(%s::bigint[]) AS k"
        f"{f' WHERE {where[0]}' if where else ''}"
        f"{' ON CONFLICT DO NOTHING' if ignore_conflicts else ''} RETURNING {quote(str(meta.pk.column))}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, list(keys), *(where[1] if where else [])])
        return [pk for (pk,) in cursor.fetchall()]


def pks_reserve(model: type[models.Model], count: int, *, using: str = "default") -> list[int]:
    """``count`` new primary keys for rows of ``model``, in increasing order, that no insert will
    ever be given (a transaction that uses them and rolls back leaves a gap, as any insert does).

    PostgreSQL: from the table's sequence, one query. SQLite: Django declares auto primary keys
    ``AUTOINCREMENT``, so the table's counter in ``sqlite_sequence`` is moved past them, two
    statements whatever came before (the counter's row made if the table never had one, then moved;
    each statement is atomic, SQLite serialises writers, and an AUTOINCREMENT insert never goes
    below the counter).
    """
    if count <= 0:
        return []
    connection = connections[using]
    meta = model._meta
    table, pk_column = meta.db_table, str(meta.pk.column)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
                [table, pk_column, count],
            )
            return [pk for (pk,) in cursor.fetchall()]
        if connection.vendor != "sqlite":
            raise NotImplementedError(f"pks_reserve: no key reservation on {connection.vendor}")
        quote = connection.ops.quote_name
        cursor.execute(
            f"INSERT INTO sqlite_sequence (name, seq) SELECT %s, (SELECT COALESCE(MAX({quote(pk_column)}), 0) "
            f"FROM {quote(table)}) WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = %s)",
            [table, table],
        )
        cursor.execute("UPDATE sqlite_sequence SET seq = seq + %s WHERE name = %s RETURNING seq", [count, table])
        (last,) = cursor.fetchone()
    return list(range(int(last) - count + 1, int(last) + 1))


def rows_insert_new(model: type[models.Model], rows: Sequence[dict[str, Any]], *, using: str = "default") -> set[int]:
    """Insert ``rows`` (dicts of attname → value, the same keys in every row, the primary key
    among them: from :func:`pks_reserve`) with ``ON CONFLICT DO NOTHING``; returns the primary
    keys of the rows inserted, so that a caller writes what depends on those only. A field left
    out takes its default (``auto_now``/``auto_now_add``: the call's "now").

    PostgreSQL: one ``INSERT … SELECT * FROM unnest(%s::type[], …) … RETURNING`` whatever the
    number of rows (one array per column, no SQL compiled per row). SQLite: ``INSERT … VALUES …
    ON CONFLICT DO NOTHING RETURNING``, one statement per batch its variable limit allows.
    """
    if not rows:
        return set()
    connection = connections[using]
    meta = model._meta
    now = timezone.now()
    pk_attname = str(meta.pk.attname)
    fields: list[models.Field[Any, Any]] = [
        *(f for f in meta.concrete_fields if f.primary_key),
        *(f for f in meta.concrete_fields if not f.primary_key),
    ]
    defaults = {c.attname: c for c in _columns(model)}
    absent = [f for f in fields if f.attname not in rows[0]]
    if pk_attname not in rows[0]:
        raise ValueError("rows_insert_new: every row carries its primary key (pks_reserve)")

    def default(attname: str) -> Any:
        value = defaults[attname].default
        if value is _NOW:
            return now
        return value() if callable(value) else value

    filled = [{**row, **{f.attname: default(f.attname) for f in absent}} for row in rows] if absent else rows
    quote = connection.ops.quote_name
    names = ", ".join(quote(str(f.column)) for f in fields)
    returning = f"ON CONFLICT DO NOTHING RETURNING {quote(str(meta.pk.column))}"
    inserted: set[int] = set()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            arrays: list[list[Any]] = []
            types: list[str] = []
            for f in fields:
                if isinstance(f, models.JSONField):
                    encoder = f.encoder
                    arrays.append(
                        [None if r[f.attname] is None else json.dumps(r[f.attname], cls=encoder) for r in filled]
                    )
                else:
                    arrays.append([f.get_db_prep_save(r[f.attname], connection) for r in filled])
                types.append(f"%s::{f.db_type(connection)}[]")
            cursor.execute(
                f"INSERT INTO {quote(meta.db_table)} ({names}) SELECT * FROM unnest({', '.join(types)}) {returning}",
                arrays,
            )
            inserted.update(pk for (pk,) in cursor.fetchall())
            return inserted
        per_statement = max(1, (connection.features.max_query_params or 999) // len(fields))
        row_sql = f"({', '.join(['%s'] * len(fields))})"
        for start in range(0, len(filled), per_statement):
            batch = filled[start : start + per_statement]
            params = [f.get_db_prep_save(r[f.attname], connection) for r in batch for f in fields]
            cursor.execute(
                f"INSERT INTO {quote(meta.db_table)} ({names}) VALUES {', '.join([row_sql] * len(batch))} {returning}",
                params,
            )
            inserted.update(pk for (pk,) in cursor.fetchall())
    return inserted


class InArray(In):
    """``lhs IN (…)`` with a list of values; on PostgreSQL ``lhs = ANY(%s::type[])`` instead: one
    array parameter whatever the list's length, so no placeholder compiled and bound per value
    (a chunk's queries over 500 run or subscriber ids). Build it with :func:`in_array`."""

    def as_postgresql(self, compiler: Any, connection: Any) -> tuple[str, Sequence[Any]]:
        if not self.rhs_is_direct_value():
            return super().as_sql(compiler, connection)
        field = self.lhs.output_field
        values = [field.get_db_prep_value(v, connection) for v in self.rhs if v is not None]
        if not values:
            raise EmptyResultSet
        lhs, lhs_params = self.process_lhs(compiler, connection)
        return f"{lhs} = ANY(%s::{field.db_type(connection)}[])", [*lhs_params, values]


def in_array(field: str, values: Iterable[Any]) -> InArray:
    """A filter, ``field IN values`` (``= ANY(array)`` on PostgreSQL): ``Run.objects.filter(in_array("pk", ids))``."""
    return InArray(F(field), list(values))
