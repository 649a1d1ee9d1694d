//! `docs/authorization.md`: the expected outcome of every (action,
//! credential) pair, as reviewable tables. `✓` = authorized (the call may
//! still fail for another reason, e.g. not found), `✗` = PERMISSION_DENIED
//! (HTTP 403 in the console).

use std::collections::BTreeMap;

pub const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/authorization.md");

/// The table under the heading `## {section}`: credential columns, and per
/// row (the first cell) whether each column is allowed.
pub fn read(section: &str) -> (Vec<String>, BTreeMap<String, Vec<bool>>) {
    let text = std::fs::read_to_string(PATH).expect("docs/authorization.md");
    let heading = format!("## {section}");
    let start = text.find(&heading).unwrap_or_else(|| panic!("no section {heading} in {PATH}"));
    let lines = text[start..].lines().skip(1).skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|'));
    let mut columns = Vec::new();
    let mut rows = BTreeMap::new();
    for (i, line) in lines.enumerate() {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        match i {
            0 => columns = cells[1..].iter().map(|c| (*c).to_owned()).collect(),
            1 => {}
            _ => {
                let allowed = cells[1..].iter().map(|c| *c == "✓").collect::<Vec<_>>();
                assert_eq!(allowed.len(), columns.len(), "row {} has a cell per credential", cells[0]);
                rows.insert(cells[0].trim_matches('`').to_owned(), allowed);
            }
        }
    }
    (columns, rows)
}

/// The table as it should be written, for a failing test to print.
pub fn render(columns: &[String], rows: &BTreeMap<String, Vec<bool>>) -> String {
    let mut out = format!("| action | {} |\n|---|{}\n", columns.join(" | "), "---|".repeat(columns.len()));
    for (row, allowed) in rows {
        let cells: Vec<&str> = allowed.iter().map(|a| if *a { "✓" } else { "✗" }).collect();
        out += &format!("| `{row}` | {} |\n", cells.join(" | "));
    }
    out
}

/// Compares what was seen with the table; on a difference prints the table
/// as seen, so a reviewer sees every changed cell.
pub fn assert_matches(section: &str, columns: &[String], seen: &BTreeMap<String, Vec<bool>>) {
    let (expected_columns, expected) = read(section);
    assert_eq!(expected_columns, columns, "{section}: the credential columns; seen:\n{}", render(columns, seen));
    if &expected != seen {
        let mut differences = Vec::new();
        for (row, allowed) in seen {
            match expected.get(row) {
                None => differences.push(format!("{row}: no row in the table")),
                Some(want) => {
                    for (i, (got, want)) in allowed.iter().zip(want).enumerate() {
                        if got != want {
                            differences.push(format!("{row} × {}: table {want}, seen {got}", columns[i]));
                        }
                    }
                }
            }
        }
        for row in expected.keys().filter(|row| !seen.contains_key(*row)) {
            differences.push(format!("{row}: in the table but not offered"));
        }
        panic!("{section} differs from {PATH}:\n{}\n\nseen:\n{}", differences.join("\n"), render(columns, seen));
    }
}
