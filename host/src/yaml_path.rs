//! Where a path inside a YAML value is written, so that an error about
//! `with.image.backend` points at `backend:`, not at `with:`.
//!
//! serde-saphyr gives spans only for typed fields; a stage's `with:` is free
//! JSON. So the source is read again as events by granit-parser (the parser
//! serde-saphyr itself uses), and the path is followed from the value's start.

use granit_parser::{Event, Parser, Span};

/// One step of a path: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A JSON pointer (`/steps/0/run`) as segments; a number is an index only
/// where the YAML holds a sequence, so both readings are kept open here.
pub fn segments(pointer: &str) -> Vec<Segment> {
    pointer
        .split('/')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let p = p.replace("~1", "/").replace("~0", "~");
            match p.parse::<usize>() {
                Ok(i) => Segment::Index(i),
                Err(_) => Segment::Key(p),
            }
        })
        .collect()
}

/// Where the key (or sequence item) at `path` below the node that starts at
/// `line`:`column` (both 1-based) is written: its start (line and 1-based
/// column) and end. `None` when the source does not hold that path as written
/// (e.g. it came from an anchor), so the caller falls back to the node itself.
pub fn locate(source: &str, line: u64, column: u64, path: &[Segment]) -> Option<Span> {
    let events: Vec<(Event<'_>, Span)> = Parser::new_from_str(source)
        .collect::<Result<_, _>>()
        .ok()?;
    let at = |s: &Span| (s.start.line() as u64, s.start.col() as u64 + 1);
    let mut node = events.iter().position(|(e, s)| {
        matches!(
            e,
            Event::MappingStart(..) | Event::SequenceStart(..) | Event::Scalar(..)
        ) && at(s) >= (line, column)
    })?;
    let mut found = None;
    for segment in path {
        let (child, span) = child(&events, node, segment)?;
        node = child;
        found = Some(span);
    }
    found
}

/// The value of `segment` in the collection at `node`, with the span to point
/// at: the key for a mapping entry, the item for a sequence.
fn child(events: &[(Event<'_>, Span)], node: usize, segment: &Segment) -> Option<(usize, Span)> {
    let mut i = node + 1;
    match (&events[node].0, segment) {
        (Event::MappingStart(..), _) => {
            let want = match segment {
                Segment::Key(k) => k.clone(),
                Segment::Index(n) => n.to_string(),
            };
            while !matches!(events.get(i)?.0, Event::MappingEnd) {
                let key = i;
                let value = skip(events, key)?;
                if let Event::Scalar(text, ..) = &events[key].0
                    && *text == want
                {
                    return Some((value, events[key].1));
                }
                i = skip(events, value)?;
            }
            None
        }
        (Event::SequenceStart(..), Segment::Index(n)) => {
            for _ in 0..*n {
                if matches!(events.get(i)?.0, Event::SequenceEnd) {
                    return None;
                }
                i = skip(events, i)?;
            }
            if matches!(events.get(i)?.0, Event::SequenceEnd) {
                return None;
            }
            Some((i, events[i].1))
        }
        _ => None,
    }
}

/// The index just after the node starting at `i`.
fn skip(events: &[(Event<'_>, Span)], i: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut j = i;
    loop {
        match events.get(j)?.0 {
            Event::MappingStart(..) | Event::SequenceStart(..) => depth += 1,
            Event::MappingEnd | Event::SequenceEnd => depth = depth.checked_sub(1)?,
            _ => {}
        }
        j += 1;
        if depth == 0 {
            return Some(j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(source: &str, line: u64, column: u64, pointer: &str) -> Option<(usize, usize)> {
        locate(source, line, column, &segments(pointer))
            .map(|s| (s.start.line(), s.start.col() + 1))
    }

    #[test]
    fn block_and_flow_paths_point_at_their_key() {
        let block = "stages:\n  - name: a\n    with:\n      image:\n        backend: nope\n        ref: x\n      steps:\n        - run: [a]\n        - run: b\n";
        // `with:`'s value starts at line 4, column 7.
        assert_eq!(at(block, 4, 7, "/image/backend"), Some((5, 9)));
        assert_eq!(at(block, 4, 7, "/image/ref"), Some((6, 9)));
        assert_eq!(at(block, 4, 7, "/steps/1/run"), Some((9, 11)));
        assert_eq!(at(block, 4, 7, "/steps/1"), Some((9, 11)));
        assert_eq!(at(block, 4, 7, "/missing"), None);
        let flow = "with: { image: { backend: nope }, tags: [a, b] }\n";
        assert_eq!(at(flow, 1, 7, "/image/backend"), Some((1, 18)));
        assert_eq!(at(flow, 1, 7, "/tags/1"), Some((1, 45)));
    }

    #[test]
    fn a_same_named_key_in_an_earlier_sibling_is_not_taken() {
        let source = "with:\n  a:\n    name: inner\n  name: outer\n";
        assert_eq!(at(source, 2, 3, "/name"), Some((4, 3)));
    }
}
