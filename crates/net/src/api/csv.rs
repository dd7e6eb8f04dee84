//! CSV as spreadsheets write it (RFC 4180), for imports: bounded fields,
//! line numbers for every refusal.

/// A CSV record: its first line's number and its fields.
pub(super) type CsvRecord = (usize, Vec<String>);
/// Where a CSV body cannot be read, and why.
pub(super) type CsvError = (usize, String);

/// Splits CSV into records of fields (RFC 4180: quotes, doubled quotes,
/// line breaks inside quotes), with each record's first line number. `;`
/// separates when the header has no `,` (what Italian spreadsheets write).
pub(super) fn csv_records(text: &str, max: usize) -> Result<Vec<CsvRecord>, CsvError> {
    // Spreadsheets write UTF-8 with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let header_line = text.lines().next().unwrap_or("");
    let sep = if !header_line.contains(',') && header_line.contains(';') {
        ';'
    } else {
        ','
    };
    let mut out = Vec::new();
    let (mut line, mut start) = (1, 1);
    let mut field = String::new();
    let mut fields = Vec::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, '\n') => {
                line += 1;
                field.push('\n');
            }
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, '"') => return Err((line, "a quote inside an unquoted field".into())),
            (false, '\r') => {}
            (false, '\n') => {
                fields.push(std::mem::take(&mut field));
                if !(fields.len() == 1 && fields[0].is_empty()) {
                    if out.len() == max {
                        return Err((line, format!("more than {} lines", max.saturating_sub(1))));
                    }
                    out.push((start, std::mem::take(&mut fields)));
                }
                fields.clear();
                line += 1;
                start = line;
            }
            (false, c) if c == sep => fields.push(std::mem::take(&mut field)),
            (false, c) => field.push(c),
        }
        if field.len() > 4096 {
            return Err((line, "a field longer than 4096 bytes".into()));
        }
        if fields.len() > 64 {
            return Err((line, "more than 64 fields".into()));
        }
    }
    if quoted {
        return Err((start, "a quoted field is not closed".into()));
    }
    fields.push(field);
    if !(fields.len() == 1 && fields[0].is_empty()) {
        out.push((start, fields));
    }
    Ok(out)
}

/// A CSV import's header (names trimmed, lower case) and its rows; an
/// empty body has no header, which is an error at line 1.
pub(super) fn csv_table(text: &str, max: usize) -> Result<(Vec<String>, Vec<CsvRecord>), CsvError> {
    let mut records = csv_records(text, max)?;
    if records.is_empty() {
        return Err((
            1,
            "empty: a header line naming the columns is needed".into(),
        ));
    }
    let (_, header) = records.remove(0);
    let header = header
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    Ok((header, records))
}
