//! Turns a batch of row operations, in queue order, into a few set-based
//! statements: one multi-row `INSERT ... SELECT FROM unnest(...) ON CONFLICT` or
//! `DELETE ... USING unnest(...)` per table, operation and column set.
//!
//! Operations on different rows may be regrouped; operations on the same row
//! keep their order (a later one goes into a later statement, or replaces the
//! earlier one when that is equivalent), so no statement touches a row twice.
//! Identifiers are checked and quoted here; values are never spliced into SQL:
//! each column travels as one `text[]` parameter, cast to the column's type.

use super::value::{to_text, ColumnKind};
use oplet_sdk::{Map, Value};
use std::borrow::Borrow;
use std::collections::HashMap;

/// What to do with one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Insert, or update the row with the same key.
    Upsert,
    /// Delete the rows whose key columns equal the values.
    Delete,
    /// Insert unless a row with the same key exists (audit records).
    InsertOnce,
}

/// One row operation, as queued.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    pub table: String,
    pub kind: OpKind,
    /// Key column names, sorted.
    pub key: Vec<String>,
    /// Every column to write (key columns included); for a delete, the key.
    pub values: Map,
}

/// A column of a table as the catalog describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// The type's name as SQL (`bigint`, `timestamp with time zone`, `text[]`).
    pub sql_type: String,
    pub kind: ColumnKind,
}

/// A table's quoted name and columns.
#[derive(Debug, Clone, PartialEq)]
pub struct TableInfo {
    pub quoted: String,
    pub columns: HashMap<String, Column>,
}

/// Why one operation cannot be applied; `stale` when a fresh look at the table
/// might change the answer (a column or table that was not there).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub op: usize,
    pub error: String,
    pub stale: bool,
}

/// One statement: its SQL and its parameters, one `text[]` per column.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Vec<Option<String>>>,
    /// Indexes (into the batch) of the operations it carries.
    pub ops: Vec<usize>,
}

/// `name` if it is a plain identifier: a letter or `_`, then letters, digits or
/// `_`, at most 63 bytes (PostgreSQL's limit).
pub fn valid_ident(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63
}

/// `"name"`, or an error naming what is wrong with it.
pub fn quote_ident(name: &str, what: &str) -> Result<String, String> {
    if valid_ident(name) {
        Ok(format!("\"{name}\""))
    } else {
        Err(format!(
            "{what} {name:?} is not a valid identifier (letters, digits and '_', not starting with a digit, at most 63)"
        ))
    }
}

/// `"table"` or `"schema"."table"`.
pub fn quote_table(name: &str) -> Result<String, String> {
    match name.split_once('.') {
        Some((schema, table)) => Ok(format!("{}.{}", quote_ident(schema, "schema")?, quote_ident(table, "table")?)),
        None => quote_ident(name, "table"),
    }
}

/// Values as the text PostgreSQL reads, `None` for NULL.
type Cells = Vec<Option<String>>;

/// Operations that share a statement: one table, kind, key and column set. The
/// first operation of a group stands for its shape.
struct Group<'a> {
    shape: &'a Op,
    /// One list per column, one entry per row.
    cells: Vec<Cells>,
    ops: Vec<usize>,
}

/// Whether `a` and `b` can share a statement.
fn same_shape(a: &Op, b: &Op) -> bool {
    a.kind == b.kind
        && a.table == b.table
        && a.key == b.key
        && (a.kind == OpKind::Delete || a.values.keys().eq(b.values.keys()))
}

/// Per table in a batch: the key column sets seen, and the latest group that
/// touches it.
struct TableSeen<'a> {
    table: &'a str,
    key_sets: Vec<&'a [String]>,
    last_group: usize,
}

/// Plans `ops` (in queue order) against the tables' catalog entries. Operations
/// that cannot be applied (unknown table or column, a value its column cannot
/// take, a missing key) come back as refusals and are left out.
pub fn plan<O: Borrow<Op>>(ops: &[O], tables: &HashMap<String, TableInfo>) -> (Vec<Statement>, Vec<Refusal>) {
    let mut groups: Vec<Group> = Vec::new();
    let mut refusals = Vec::new();
    let mut seen: Vec<TableSeen> = Vec::new();
    // (table and key columns, key values) -> (group, row) of the latest op on
    // that row. The first part is an index into `spaces`.
    let mut spaces: Vec<(&str, &[String])> = Vec::new();
    let mut last_of_key: HashMap<(usize, Cells), (usize, usize)> = HashMap::new();

    for (index, op) in ops.iter().enumerate() {
        let op: &Op = op.borrow();
        let converted = match tables.get(&op.table) {
            Some(info) => convert(op, info),
            None => Err((format!("table {:?} does not exist", op.table), true)),
        };
        let (key, cells) = match converted {
            Ok(row) => row,
            Err((error, stale)) => {
                refusals.push(Refusal { op: index, error, stale });
                continue;
            }
        };
        // Two key sets on one table may name the same row: the table is then kept
        // in queue order as a whole.
        let t = match seen.iter().position(|t| t.table == op.table) {
            Some(t) => t,
            None => {
                seen.push(TableSeen { table: &op.table, key_sets: vec![], last_group: 0 });
                seen.len() - 1
            }
        };
        if !seen[t].key_sets.contains(&op.key.as_slice()) {
            seen[t].key_sets.push(&op.key);
        }
        let whole_table = seen[t].key_sets.len() > 1;
        let space = match spaces.iter().position(|(table, key)| *table == op.table && *key == op.key.as_slice()) {
            Some(s) => s,
            None => {
                spaces.push((&op.table, &op.key));
                spaces.len() - 1
            }
        };
        let key_id = (space, key);
        let last = last_of_key.get(&key_id).copied();

        // The same row again, in a group of the same shape that no later group
        // touches: the later op can stand in for (or after) the earlier one.
        if let Some((g, r)) = last.filter(|(g, _)| same_shape(groups[*g].shape, op) && !whole_table) {
            let group = &mut groups[g];
            if op.kind == OpKind::Upsert {
                for (column, cell) in group.cells.iter_mut().zip(cells) {
                    column[r] = cell;
                }
            }
            group.ops.push(index);
            continue;
        }
        let mut earliest = last.map_or(0, |(g, _)| g + 1);
        if whole_table {
            earliest = earliest.max(seen[t].last_group + 1);
        }
        let g = match (earliest..groups.len()).find(|g| same_shape(groups[*g].shape, op)) {
            Some(g) => g,
            None => {
                groups.push(Group { shape: op, cells: vec![Vec::new(); cells.len()], ops: vec![] });
                groups.len() - 1
            }
        };
        let group = &mut groups[g];
        let r = group.cells.first().map_or(0, Vec::len);
        for (column, cell) in group.cells.iter_mut().zip(cells) {
            column.push(cell);
        }
        group.ops.push(index);
        last_of_key.insert(key_id, (g, r));
        seen[t].last_group = seen[t].last_group.max(g);
    }
    let statements = groups.into_iter().map(|g| statement(g, tables)).collect();
    (statements, refusals)
}

/// Checks `op` against its table and converts its values to text cells: the
/// key's, and every column's (for a delete, the key's again).
fn convert(op: &Op, info: &TableInfo) -> Result<(Cells, Cells), (String, bool)> {
    if op.key.is_empty() {
        return Err((format!("{:?} on table {:?} names no key column", op.kind, op.table), false));
    }
    let column = |name: &str| -> Result<&Column, (String, bool)> {
        if !valid_ident(name) {
            return Err((quote_ident(name, "column").expect_err("not an identifier"), false));
        }
        info.columns.get(name).ok_or_else(|| {
            let mut known: Vec<&str> = info.columns.keys().map(String::as_str).collect();
            known.sort_unstable();
            (format!("column {name:?} does not exist in table {:?} (its columns: {})", op.table, known.join(", ")), true)
        })
    };
    let mut key = Vec::with_capacity(op.key.len());
    for name in &op.key {
        let col = column(name)?;
        let value = op.values.get(name).unwrap_or(&Value::Null);
        let text = to_text(value, &col.kind).map_err(|e| (format!("column {name:?}: {e}"), false))?;
        if text.is_none() {
            return Err((format!("key column {name:?} of table {:?} is missing or null", op.table), false));
        }
        key.push(text);
    }
    let cells = match op.kind {
        OpKind::Delete => key.clone(),
        OpKind::Upsert | OpKind::InsertOnce => {
            let mut cells = Vec::with_capacity(op.values.len());
            for (name, value) in &op.values {
                let col = column(name)?;
                cells.push(to_text(value, &col.kind).map_err(|e| (format!("column {name:?}: {e}"), false))?);
            }
            cells
        }
    };
    Ok((key, cells))
}

fn statement(g: Group, tables: &HashMap<String, TableInfo>) -> Statement {
    let op = g.shape;
    let columns: Vec<&str> = match op.kind {
        OpKind::Delete => op.key.iter().map(String::as_str).collect(),
        OpKind::Upsert | OpKind::InsertOnce => op.values.keys().map(String::as_str).collect(),
    };
    let sql = sql(op, &columns, &tables[&op.table]);
    Statement { sql, params: g.cells, ops: g.ops }
}

/// The SQL of one group. Every name in it was checked by `quote_ident` or comes
/// from the catalog; `$n` are `text[]`, one per column.
fn sql(op: &Op, columns: &[&str], info: &TableInfo) -> String {
    let q = |c: &str| format!("\"{c}\"");
    // `unnest($1::text[], ...) AS u(c0, ...)` and each column cast to its type.
    let arrays: Vec<String> = (1..=columns.len()).map(|i| format!("${i}::text[]")).collect();
    let aliases: Vec<String> = (0..columns.len()).map(|i| format!("c{i}")).collect();
    let from = format!("unnest({}) AS u({})", arrays.join(", "), aliases.join(", "));
    let casts: Vec<String> =
        columns.iter().enumerate().map(|(i, c)| format!("u.c{i}::{}", info.columns[*c].sql_type)).collect();
    match op.kind {
        OpKind::Upsert | OpKind::InsertOnce => {
            let quoted: Vec<String> = columns.iter().map(|c| q(c)).collect();
            let keys: Vec<String> = op.key.iter().map(|c| q(c)).collect();
            let updates: Vec<String> = columns
                .iter()
                .filter(|c| !op.key.iter().any(|k| k == *c))
                .map(|c| format!("{0} = EXCLUDED.{0}", q(c)))
                .collect();
            let action = if op.kind == OpKind::InsertOnce || updates.is_empty() {
                "DO NOTHING".to_string()
            } else {
                format!("DO UPDATE SET {}", updates.join(", "))
            };
            format!(
                "INSERT INTO {} ({}) SELECT {} FROM {from} ON CONFLICT ({}) {action}",
                info.quoted,
                quoted.join(", "),
                casts.join(", "),
                keys.join(", ")
            )
        }
        OpKind::Delete => {
            let select: Vec<String> = casts.iter().enumerate().map(|(i, c)| format!("{c} AS k{i}")).collect();
            let matches: Vec<String> =
                columns.iter().enumerate().map(|(i, c)| format!("t.{} = d.k{i}", q(c))).collect();
            format!(
                "DELETE FROM {} AS t USING (SELECT {} FROM {from}) AS d WHERE {}",
                info.quoted,
                select.join(", "),
                matches.join(" AND ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> HashMap<String, TableInfo> {
        let col = |t: &str, k: ColumnKind| Column { sql_type: t.into(), kind: k };
        let columns = [
            ("id".to_string(), col("text", ColumnKind::Text)),
            ("email".to_string(), col("text", ColumnKind::Text)),
            ("n".to_string(), col("bigint", ColumnKind::Number)),
            ("doc".to_string(), col("jsonb", ColumnKind::Json)),
        ]
        .into_iter()
        .collect();
        [("users".to_string(), TableInfo { quoted: "\"users\"".into(), columns })].into_iter().collect()
    }

    fn upsert(id: &str, pairs: &[(&str, Value)]) -> Op {
        let mut values: Map = pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        values.insert("id".into(), id.into());
        Op { table: "users".into(), kind: OpKind::Upsert, key: vec!["id".into()], values }
    }

    fn delete(id: &str) -> Op {
        Op { table: "users".into(), kind: OpKind::Delete, key: vec!["id".into()], values: [("id".to_string(), id.into())].into_iter().collect() }
    }

    #[test]
    fn rows_of_many_events_share_one_statement_with_one_array_per_column() {
        let ops = vec![upsert("a", &[("n", Value::Int(1))]), upsert("b", &[("n", Value::Int(2))])];
        let (stmts, refused) = plan(&ops, &users());
        assert!(refused.is_empty());
        assert_eq!(stmts.len(), 1);
        assert_eq!(
            stmts[0].sql,
            "INSERT INTO \"users\" (\"id\", \"n\") SELECT u.c0::text, u.c1::bigint FROM unnest($1::text[], $2::text[]) \
             AS u(c0, c1) ON CONFLICT (\"id\") DO UPDATE SET \"n\" = EXCLUDED.\"n\""
        );
        assert_eq!(stmts[0].params, vec![vec![Some("a".into()), Some("b".into())], vec![Some("1".into()), Some("2".into())]]);
    }

    #[test]
    fn a_second_upsert_of_the_same_row_replaces_the_first_instead_of_touching_the_row_twice() {
        let ops = vec![upsert("a", &[("n", Value::Int(1))]), upsert("b", &[("n", Value::Int(5))]), upsert("a", &[("n", Value::Int(2))])];
        let (stmts, _) = plan(&ops, &users());
        assert_eq!(stmts.len(), 1);
        assert_eq!(stmts[0].params[1], vec![Some("2".into()), Some("5".into())]);
        assert_eq!(stmts[0].ops, vec![0, 1, 2]);
    }

    #[test]
    fn operations_on_one_row_keep_their_order_across_statements() {
        // insert a, delete a, insert a again (other columns), insert b.
        let ops = vec![
            upsert("a", &[("n", Value::Int(1))]),
            delete("a"),
            upsert("a", &[("email", "x@y".into())]),
            upsert("b", &[("n", Value::Int(2))]),
            delete("c"),
        ];
        let (stmts, _) = plan(&ops, &users());
        let kinds: Vec<(&str, Vec<usize>)> = stmts.iter().map(|s| (&s.sql[..6], s.ops.clone())).collect();
        assert_eq!(kinds, vec![("INSERT", vec![0, 3]), ("DELETE", vec![1, 4]), ("INSERT", vec![2])]);
    }

    #[test]
    fn an_upsert_after_a_delete_of_the_same_row_is_not_merged_into_an_earlier_insert() {
        let ops = vec![upsert("a", &[("n", Value::Int(1))]), delete("a"), upsert("a", &[("n", Value::Int(2))])];
        let (stmts, _) = plan(&ops, &users());
        let order: Vec<Vec<usize>> = stmts.iter().map(|s| s.ops.clone()).collect();
        assert_eq!(order, vec![vec![0], vec![1], vec![2]]);
    }

    #[test]
    fn names_that_are_not_identifiers_or_not_columns_are_refused_and_values_never_reach_the_sql() {
        let ops = vec![
            upsert("a", &[("x\"; DROP TABLE t; --", Value::Int(1))]),
            upsert("b", &[("nope", Value::Int(1))]),
            upsert("c", &[("email", "x'); DROP TABLE t; --".into())]),
            Op { table: "missing".into(), ..delete("d") },
        ];
        let (stmts, refused) = plan(&ops, &users());
        assert_eq!(refused.len(), 3);
        assert!(refused[0].error.contains("not a valid identifier") && !refused[0].stale, "{:?}", refused[0]);
        assert!(refused[1].error.contains("column \"nope\" does not exist") && refused[1].stale, "{:?}", refused[1]);
        assert!(refused[2].error.contains("table \"missing\" does not exist"), "{:?}", refused[2]);
        assert_eq!(stmts.len(), 1);
        assert!(!stmts[0].sql.contains("DROP"), "{}", stmts[0].sql);
        assert_eq!(stmts[0].params[0], vec![Some("x'); DROP TABLE t; --".into())]);
    }

    #[test]
    fn deletes_join_on_their_key_and_null_keys_are_refused() {
        let (stmts, _) = plan(&[delete("a"), delete("b")], &users());
        assert_eq!(
            stmts[0].sql,
            "DELETE FROM \"users\" AS t USING (SELECT u.c0::text AS k0 FROM unnest($1::text[]) AS u(c0)) AS d WHERE t.\"id\" = d.k0"
        );
        let mut op = delete("a");
        op.values.insert("id".into(), Value::Null);
        let (_, refused) = plan(&[op], &users());
        assert!(refused[0].error.contains("missing or null"), "{:?}", refused[0]);
    }

    #[test]
    fn identifiers_allow_a_schema_and_nothing_else() {
        assert_eq!(quote_table("public.users").unwrap(), "\"public\".\"users\"");
        assert!(quote_table("users; drop").is_err());
        assert!(quote_table("a.b.c").is_err());
        assert!(quote_ident("9lives", "column").is_err());
        assert!(quote_ident(&"a".repeat(64), "column").is_err());
        assert!(quote_ident("", "column").is_err());
    }
}
