//! A small CSV reader for the snapshot files: fields separated by `,`, records by `\n` or
//! `\r\n`; a field may be double-quoted, and inside quotes `""` is a literal `"` and commas and
//! line breaks are data. Blank lines are skipped. Data-management writes every field quoted;
//! unquoted fields are accepted too, so hand-written files work in the local mode.

use crate::error::{Error, Result};

/// One record and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// 1-based line number of the record's first character.
    pub line: usize,
    /// The unquoted fields.
    pub fields: Vec<String>,
}

/// Parses the whole of `text`; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Vec<Record>> {
    let mut parser = Parser {
        chars: text.chars().peekable(),
        line: 1,
        file,
    };
    let mut records = Vec::new();
    while let Some(record) = parser.record()? {
        if record.fields.len() > 1 || record.fields.first().is_some_and(|f| !f.is_empty()) {
            records.push(record);
        }
    }
    Ok(records)
}

struct Parser<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: usize,
    file: &'a str,
}

impl Parser<'_> {
    fn error(&self, line: usize, reason: &str) -> Error {
        Error::Data {
            file: self.file.to_string(),
            line,
            reason: reason.to_string(),
        }
    }

    /// The next record, `None` at the end of the input.
    fn record(&mut self) -> Result<Option<Record>> {
        if self.chars.peek().is_none() {
            return Ok(None);
        }
        let line = self.line;
        let mut fields = Vec::new();
        loop {
            let field = if self.chars.peek() == Some(&'"') {
                self.chars.next();
                self.quoted(line)?
            } else {
                self.unquoted()
            };
            fields.push(field);
            match self.chars.next() {
                Some(',') => continue,
                Some('\r') if self.chars.peek() == Some(&'\n') => {
                    self.chars.next();
                    self.line += 1;
                }
                Some('\n') => self.line += 1,
                None => {}
                Some(_) => return Err(self.error(self.line, "text after a closing quote")),
            }
            return Ok(Some(Record { line, fields }));
        }
    }

    fn quoted(&mut self, start: usize) -> Result<String> {
        let mut field = String::new();
        loop {
            match self.chars.next() {
                None => return Err(self.error(start, "unterminated quoted field")),
                Some('"') if self.chars.peek() == Some(&'"') => {
                    self.chars.next();
                    field.push('"');
                }
                Some('"') => return Ok(field),
                Some(c) => {
                    if c == '\n' {
                        self.line += 1;
                    }
                    field.push(c);
                }
            }
        }
    }

    fn unquoted(&mut self) -> String {
        let mut field = String::new();
        while let Some(&c) = self.chars.peek() {
            if c == ',' || c == '\n' || (c == '\r' && self.is_crlf()) {
                break;
            }
            field.push(c);
            self.chars.next();
        }
        field
    }

    fn is_crlf(&self) -> bool {
        let mut ahead = self.chars.clone();
        ahead.next();
        ahead.peek() == Some(&'\n')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Vec<Vec<String>> {
        parse(text, "t.csv")
            .expect("parses")
            .into_iter()
            .map(|r| r.fields)
            .collect()
    }

    #[test]
    fn quoted_fields_with_doubled_quotes_commas_and_newlines() {
        let text = "\"say \"\"hi\"\", ok\",\"1;2\"\r\n\"two\nlines\",\"3\"\n";
        assert_eq!(
            fields(text),
            [vec!["say \"hi\", ok", "1;2"], vec!["two\nlines", "3"]]
        );
        let records = parse(text, "t.csv").expect("parses");
        assert_eq!(records[1].line, 2);
    }

    #[test]
    fn unquoted_fields_and_blank_lines() {
        assert_eq!(
            fields("a,b\n\n\"c\",d\n\"\",\"\""),
            [vec!["a", "b"], vec!["c", "d"], vec!["", ""]]
        );
        assert!(fields("").is_empty());
    }

    #[test]
    fn malformed_quoting_is_an_error_with_a_line() {
        let err = parse("\"a\",\"1\"\n\"b\"x,\"2\"\n", "e.csv").expect_err("fails");
        assert!(err.to_string().contains("e.csv line 2"), "{err}");
        let err = parse("\"a\",\"1\"\n\"open,1\n", "e.csv").expect_err("fails");
        assert!(err.to_string().contains("line 2: unterminated"), "{err}");
    }
}
