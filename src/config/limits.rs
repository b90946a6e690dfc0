//! Limits on a configuration's text, checked before a YAML parser sees it: its size
//! ([`MAX_CONFIG_BYTES`]) and how deeply its collections nest ([`MAX_NESTING`]).
//!
//! Why: a YAML parser's cost can grow with the square of the nesting depth (libyaml revisits
//! every open flow level on every token: 100,000 nested `[` took half a minute), and a deep
//! document recurses deeply in any deserializer. No real configuration nests more than about
//! ten levels.
//!
//! The depth is found by [`nesting`], one linear pass that follows YAML's token rules (those
//! of libyaml's scanner, which saphyr's parser shares) without building anything:
//! - flow collections (`[`, `{`) count one level each, except inside quoted, plain and block
//!   scalars and comments, which are skipped with the same rules the parser uses (a `[` in
//!   `"a[b"`, in `key: a[b`, in a `|` block or after `#` is not a collection); so does a
//!   `key: value` entry of a flow sequence (`[a: b]`, and `[: b]` with its empty key, are
//!   lists holding a mapping);
//! - block collections count one level per indentation the parser opens (a `- ` entry, a
//!   `? ` key or a `key:` at a column deeper than the enclosing collection's, so `- - - x` on
//!   one line is three levels), plus one for a sequence written at its mapping key's column.
//!
//! The count is never below the nesting the parser would build: that is what makes the check
//! sound. It is above it for a document the parser rejects, and by one level where a mapping
//! that held a sequence at its own column goes on to nest deeper under a later key; on
//! random documents the parser accepts it matched exactly (the tests compare them). The
//! pass does constant work per character and stops at the first collection past the limit.
//! It is independent of the YAML crate.

use super::ConfigError;

/// The largest configuration accepted, in bytes (4 MiB; the shipped ones are under 10 KiB).
pub(crate) const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

/// The deepest nesting of collections (mappings and lists, block or flow) accepted. The
/// shipped configurations nest at most 7 deep.
pub(crate) const MAX_NESTING: usize = 64;

/// Checks `text` against both limits; `origin` names it in the error (a path, or
/// "the configuration").
pub(super) fn check(text: &str, origin: &str) -> Result<(), ConfigError> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            origin: origin.to_string(),
            size: text.len() as u64,
            limit: MAX_CONFIG_BYTES as u64,
        });
    }
    let n = nesting(text, MAX_NESTING);
    match n.over {
        Some((line, column)) => Err(ConfigError::TooDeep {
            origin: origin.to_string(),
            line,
            column,
            limit: MAX_NESTING,
        }),
        None => Ok(()),
    }
}

/// What [`nesting`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Nesting {
    /// The deepest nesting seen (up to the point where `limit` was passed).
    pub(crate) max: usize,
    /// Where the nesting first went beyond the limit: 1-based line and column.
    pub(crate) over: Option<(usize, usize)>,
}

/// Scans `text` once and returns its deepest nesting of collections, stopping at the first
/// collection that goes beyond `limit`.
pub(crate) fn nesting(text: &str, limit: usize) -> Nesting {
    let mut s = Scanner {
        b: text.as_bytes(),
        i: 0,
        line: 0,
        col: 0,
        contexts: vec![Context::new(false, 0)],
        pairs: 0,
        indents: Vec::new(),
        indentless: 0,
        allowed: true,
        max: 0,
        limit,
        over: None,
    };
    s.run();
    Nesting {
        max: s.max,
        over: s.over,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    Sequence,
    Mapping,
}

/// A block indentation level: its column, what opened it, and whether a sequence was written
/// at its own column (a mapping value's `- ` at the key's column).
struct Level {
    col: usize,
    kind: Block,
    indentless: bool,
}

/// Where a possible simple key (`key: value`) began. It stops being one at the end of its
/// line or 1024 bytes on, as in the parser.
#[derive(Clone, Copy)]
struct Key {
    line: usize,
    index: usize,
    col: usize,
}

/// The block context, or one open flow collection: the parser keeps one possible simple key
/// for each.
struct Context {
    /// A flow sequence: an entry that turns out to be `key: value` is a mapping of its own.
    seq: bool,
    /// The current entry of this flow sequence is such a mapping.
    pair: bool,
    key: Option<Key>,
    /// The deepest nesting reached inside the possible key: a key is known to be one only at
    /// its `:`, and what it holds then nests one level deeper (in the mapping the `:` opens).
    in_key: usize,
    /// The deepest nesting reached inside this collection.
    inner: usize,
}

impl Context {
    fn new(seq: bool, depth: usize) -> Context {
        Context {
            seq,
            pair: false,
            key: None,
            in_key: 0,
            inner: depth,
        }
    }
}

struct Scanner<'a> {
    b: &'a [u8],
    /// Byte offset.
    i: usize,
    /// 0-based line and column (in characters), as the parser counts them.
    line: usize,
    col: usize,
    /// The block context, then each open flow collection.
    contexts: Vec<Context>,
    /// How many open flow sequences are in a `key: value` entry.
    pairs: usize,
    /// Open block collections.
    indents: Vec<Level>,
    /// How many of `indents` hold an indentless sequence.
    indentless: usize,
    /// Whether a simple key may start here (the parser's `simple_key_allowed`).
    allowed: bool,
    max: usize,
    limit: usize,
    over: Option<(usize, usize)>,
}

fn is_alpha(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

fn is_uri(c: u8) -> bool {
    is_alpha(c) || b";/?:@&=+$.%!~*'()".contains(&c)
}

impl Scanner<'_> {
    fn at(&self, k: usize) -> u8 {
        self.b.get(self.i + k).copied().unwrap_or(0)
    }

    fn end(&self) -> bool {
        self.i >= self.b.len()
    }

    fn is_break(&self, k: usize) -> bool {
        match self.at(k) {
            b'\r' | b'\n' => true,
            0xC2 => self.at(k + 1) == 0x85,
            0xE2 => self.at(k + 1) == 0x80 && matches!(self.at(k + 2), 0xA8 | 0xA9),
            _ => false,
        }
    }

    fn is_blank(&self, k: usize) -> bool {
        matches!(self.at(k), b' ' | b'\t')
    }

    fn is_blankz(&self, k: usize) -> bool {
        self.i + k >= self.b.len() || self.is_blank(k) || self.is_break(k)
    }

    fn is_breakz(&self, k: usize) -> bool {
        self.i + k >= self.b.len() || self.is_break(k)
    }

    /// Moves past one character.
    fn skip(&mut self) {
        let w = match self.at(0) {
            c if c < 0x80 => 1,
            c if c >= 0xF0 => 4,
            c if c >= 0xE0 => 3,
            _ => 2,
        };
        self.i = (self.i + w).min(self.b.len());
        self.col += 1;
    }

    /// Moves past a line break.
    fn skip_line(&mut self) {
        if self.at(0) == b'\r' && self.at(1) == b'\n' {
            self.i += 2;
        } else {
            self.skip();
        }
        self.line += 1;
        self.col = 0;
    }

    /// `---` or `...` at the start of a line.
    fn document_marker(&self) -> bool {
        self.col == 0
            && ((self.at(0) == b'-' && self.at(1) == b'-' && self.at(2) == b'-')
                || (self.at(0) == b'.' && self.at(1) == b'.' && self.at(2) == b'.'))
            && self.is_blankz(3)
    }

    fn flow(&self) -> usize {
        self.contexts.len() - 1
    }

    fn top(&mut self) -> &mut Context {
        let last = self.contexts.len() - 1;
        &mut self.contexts[last]
    }

    fn indent(&self) -> isize {
        self.indents.last().map_or(-1, |l| l.col as isize)
    }

    /// The open collections: block, flow, and the mappings of `key: value` sequence entries.
    fn depth(&self) -> usize {
        self.indents.len() + self.indentless + self.flow() + self.pairs
    }

    /// Records a collection opened at `line`, `col` at depth `d`.
    fn record(&mut self, d: usize, line: usize, col: usize) {
        self.max = self.max.max(d);
        if d > self.limit && self.over.is_none() {
            self.over = Some((line + 1, col + 1));
        }
    }

    /// Opens a block collection at `col` if it is deeper than the current one; `in_key`: the
    /// deepest nesting inside the simple key it is opened for (0 if none).
    fn roll_indent(&mut self, col: usize, kind: Block, line: usize, in_key: usize) {
        if self.flow() > 0 {
            return;
        }
        if self.indent() < col as isize {
            self.indents.push(Level {
                col,
                kind,
                indentless: false,
            });
            let d = self.depth().max(in_key + 1);
            self.record(d, line, col);
        } else if kind == Block::Sequence && self.indent() == col as isize {
            // `- ` at the column of the mapping it is a value of.
            if let Some(top) = self.indents.last_mut() {
                if top.kind == Block::Mapping && !top.indentless {
                    top.indentless = true;
                    self.indentless += 1;
                    self.record(self.depth(), line, col);
                }
            }
        }
    }

    fn unroll_indent(&mut self, col: isize) {
        if self.flow() > 0 {
            return;
        }
        while self.indent() > col {
            if self.indents.pop().is_some_and(|l| l.indentless) {
                self.indentless -= 1;
            }
        }
    }

    fn save_key(&mut self) {
        if self.allowed {
            let key = Key {
                line: self.line,
                index: self.i,
                col: self.col,
            };
            let top = self.top();
            top.key = Some(key);
            top.in_key = 0;
        }
    }

    fn remove_key(&mut self) {
        self.top().key = None;
    }

    /// The current flow sequence entry is a `key: value` mapping; `in_key` as for
    /// [`Scanner::roll_indent`].
    fn pair(&mut self, line: usize, col: usize, in_key: usize) {
        let top = self.top();
        if top.seq && !top.pair {
            top.pair = true;
            self.pairs += 1;
            let d = self.depth().max(in_key + 1);
            let top = self.top();
            top.inner = top.inner.max(d);
            self.record(d, line, col);
        }
    }

    fn run(&mut self) {
        while self.over.is_none() {
            self.skip_to_token();
            self.unroll_indent(self.col as isize);
            if self.end() {
                return;
            }
            self.token();
        }
    }

    /// Skips blanks, comments and line breaks.
    fn skip_to_token(&mut self) {
        loop {
            if self.col == 0 && self.b[self.i..].starts_with(&[0xEF, 0xBB, 0xBF]) {
                self.i += 3;
            }
            while self.at(0) == b' ' || ((self.flow() > 0 || !self.allowed) && self.at(0) == b'\t') {
                self.skip();
            }
            if self.at(0) == b'#' {
                while !self.is_breakz(0) {
                    self.skip();
                }
            }
            if self.end() || !self.is_break(0) {
                return;
            }
            self.skip_line();
            if self.flow() == 0 {
                self.allowed = true;
            }
        }
    }

    fn token(&mut self) {
        let c = self.at(0);
        let (line, col) = (self.line, self.col);
        let flow = self.flow();
        if col == 0 && c == b'%' {
            // A directive: one line.
            self.unroll_indent(-1);
            self.remove_key();
            self.allowed = false;
            while !self.is_breakz(0) {
                self.skip();
            }
        } else if self.document_marker() {
            self.unroll_indent(-1);
            self.remove_key();
            self.allowed = false;
            self.i += 3;
            self.col += 3;
        } else if c == b'[' || c == b'{' {
            self.save_key();
            let d = self.depth() + 1;
            let top = self.top();
            top.inner = top.inner.max(d);
            top.in_key = top.in_key.max(d);
            self.contexts.push(Context::new(c == b'[', d));
            self.allowed = true;
            self.skip();
            self.record(d, line, col);
        } else if c == b']' || c == b'}' {
            self.remove_key();
            if flow > 0 {
                if let Some(closed) = self.contexts.pop() {
                    if closed.pair {
                        self.pairs -= 1;
                    }
                    let top = self.top();
                    top.inner = top.inner.max(closed.inner);
                    top.in_key = top.in_key.max(closed.inner);
                }
            }
            self.allowed = false;
            self.skip();
        } else if c == b',' {
            self.remove_key();
            let top = self.top();
            if top.pair {
                top.pair = false;
                self.pairs -= 1;
            }
            self.allowed = true;
            self.skip();
        } else if c == b'-' && self.is_blankz(1) {
            self.roll_indent(col, Block::Sequence, line, 0);
            self.remove_key();
            self.allowed = true;
            self.skip();
        } else if c == b'?' && (flow > 0 || self.is_blankz(1)) {
            if flow == 0 {
                self.roll_indent(col, Block::Mapping, line, 0);
            } else {
                self.pair(line, col, 0);
            }
            self.remove_key();
            self.allowed = flow == 0;
            self.skip();
        } else if c == b':' && (flow > 0 || self.is_blankz(1)) {
            let (here, at) = (self.line, self.i);
            let top = self.top();
            let key = top.key.take().filter(|k| k.line == here && k.index + 1024 >= at);
            let in_key = top.in_key;
            match key {
                Some(k) => {
                    if flow == 0 {
                        self.roll_indent(k.col, Block::Mapping, k.line, in_key);
                    } else {
                        self.pair(k.line, k.col, in_key);
                    }
                    self.allowed = false;
                }
                None => {
                    if flow == 0 {
                        self.roll_indent(col, Block::Mapping, line, 0);
                    } else {
                        // `[ : x ]`: a pair with an empty key (YAML 1.2), a mapping of its own.
                        self.pair(line, col, 0);
                    }
                    self.allowed = flow == 0;
                }
            }
            self.skip();
        } else if c == b'*' || c == b'&' {
            self.save_key();
            self.allowed = false;
            self.skip();
            while is_alpha(self.at(0)) {
                self.skip();
            }
        } else if c == b'!' {
            self.save_key();
            self.allowed = false;
            self.tag();
        } else if (c == b'|' || c == b'>') && flow == 0 {
            self.remove_key();
            self.allowed = true;
            self.block_scalar();
        } else if c == b'\'' || c == b'"' {
            self.save_key();
            self.allowed = false;
            self.quoted(c);
        } else if self.plain_starts() {
            self.save_key();
            self.allowed = false;
            self.plain();
        } else {
            // A character no token starts with: the parser stops here.
            self.skip();
        }
    }

    fn plain_starts(&self) -> bool {
        let c = self.at(0);
        let indicator = self.is_blankz(0) || b"-?:,[]{}#&*!|>'\"%@`".contains(&c);
        !indicator
            || (c == b'-' && !self.is_blank(1))
            || (self.flow() == 0 && (c == b'?' || c == b':') && !self.is_blankz(1))
    }

    /// `!tag`, `!handle!suffix` or `!<verbatim>`.
    fn tag(&mut self) {
        self.skip();
        if self.at(0) == b'<' {
            self.skip();
            while is_uri(self.at(0)) || matches!(self.at(0), b',' | b'[' | b']') {
                self.skip();
            }
            if self.at(0) == b'>' {
                self.skip();
            }
        } else {
            while is_uri(self.at(0)) {
                self.skip();
            }
        }
    }

    /// A `'single'` or `"double"` quoted scalar, over as many lines as it takes.
    fn quoted(&mut self, quote: u8) {
        self.skip();
        loop {
            if self.end() || self.document_marker() {
                return;
            }
            let c = self.at(0);
            if self.is_break(0) {
                self.skip_line();
            } else if quote == b'\'' && c == b'\'' && self.at(1) == b'\'' {
                self.skip();
                self.skip();
            } else if c == quote {
                self.skip();
                return;
            } else if quote == b'"' && c == b'\\' {
                self.skip();
                if self.is_break(0) {
                    self.skip_line();
                } else if !self.end() {
                    self.skip();
                }
            } else {
                self.skip();
            }
        }
    }

    /// A plain scalar: up to `: `, ` #`, a flow indicator in a flow collection, or a line
    /// indented no deeper than the enclosing block collection.
    fn plain(&mut self) {
        let indent = self.indent() + 1;
        let mut leading_blanks = false;
        loop {
            if self.document_marker() || self.at(0) == b'#' {
                break;
            }
            while !self.is_blankz(0) {
                let c = self.at(0);
                if self.flow() > 0 && c == b':' && b",?[]{}".contains(&self.at(1)) {
                    // The parser rejects this.
                    return;
                }
                if (c == b':' && self.is_blankz(1)) || (self.flow() > 0 && b",[]{}".contains(&c)) {
                    break;
                }
                self.skip();
            }
            if !(self.is_blank(0) || self.is_break(0)) {
                break;
            }
            while self.is_blank(0) || self.is_break(0) {
                if self.is_blank(0) {
                    self.skip();
                } else {
                    self.skip_line();
                    leading_blanks = true;
                }
            }
            if self.flow() == 0 && (self.col as isize) < indent {
                break;
            }
        }
        if leading_blanks {
            self.allowed = true;
        }
    }

    /// A `|` or `>` block scalar: its header line, then every line indented at least as
    /// deep as its first non-empty one (or its indentation indicator says).
    fn block_scalar(&mut self) {
        self.skip();
        let mut increment = 0usize;
        for _ in 0..2 {
            match self.at(0) {
                b'+' | b'-' => self.skip(),
                d @ b'1'..=b'9' => {
                    increment = usize::from(d - b'0');
                    self.skip();
                }
                _ => {}
            }
        }
        while self.is_blank(0) {
            self.skip();
        }
        if self.at(0) == b'#' {
            while !self.is_breakz(0) {
                self.skip();
            }
        }
        if !self.is_breakz(0) {
            // The parser rejects this.
            return;
        }
        if self.end() {
            return;
        }
        self.skip_line();
        let parent = self.indent();
        let mut indent = if increment == 0 {
            0
        } else if parent >= 0 {
            parent as usize + increment
        } else {
            increment
        };
        if !self.block_breaks(&mut indent, parent) {
            return;
        }
        while self.col == indent && !self.end() {
            while !self.is_breakz(0) {
                self.skip();
            }
            if self.end() {
                return;
            }
            self.skip_line();
            if !self.block_breaks(&mut indent, parent) {
                return;
            }
        }
    }

    /// The indentation and empty lines of a block scalar; settles `indent` if it is 0.
    /// False where the parser stops (a tab in the indentation).
    fn block_breaks(&mut self, indent: &mut usize, parent: isize) -> bool {
        let mut max_indent = 0;
        loop {
            while (*indent == 0 || self.col < *indent) && self.at(0) == b' ' {
                self.skip();
            }
            max_indent = max_indent.max(self.col);
            if (*indent == 0 || self.col < *indent) && self.at(0) == b'\t' {
                return false;
            }
            if !self.is_break(0) {
                break;
            }
            self.skip_line();
        }
        if *indent == 0 {
            *indent = max_indent.max((parent + 1).max(1) as usize);
        }
        true
    }
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
