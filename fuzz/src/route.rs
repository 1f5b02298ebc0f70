//! What every route template must be, whatever path it came from.

use monitor_common::http::{
    FNV_OFFSET, ID_PLACEHOLDER, MAX_PATH_LEN, REST_PLACEHOLDER, SegmentShape, Template, fnv_bytes,
};

/// Longest template text: each path segment (with its `/`) becomes at most `/{id}`, and a
/// cut path ends in `/{*}`.
pub const MAX_TEXT_LEN: usize = (MAX_PATH_LEN / 2 + 1) * (1 + ID_PLACEHOLDER.len()) + 1 + 3;

/// Checks the invariants of a template: its text is a label-safe path whose hash is the one
/// counted; identifiers were all replaced; the collapsed form is `/<first segment>/{*}`.
pub fn check(template: &Template) {
    let text = &template.text;
    assert!(text.starts_with('/'), "{text:?}");
    assert!(text.len() <= MAX_TEXT_LEN, "{} bytes: {text:?}", text.len());
    assert!(
        text.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#'),
        "query, fragment, blanks or non-ASCII bytes left in {text:?}"
    );
    assert_eq!(
        template.hash,
        fnv_bytes(FNV_OFFSET, text.as_bytes()),
        "the hash is not the text's: {text:?}"
    );
    let segments: Vec<&str> = text[1..].split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        if text == "/" {
            break;
        }
        assert!(!segment.is_empty(), "an empty segment in {text:?}");
        if segment.as_bytes() == ID_PLACEHOLDER {
            continue;
        }
        if segment.as_bytes() == REST_PLACEHOLDER {
            assert_eq!(i, segments.len() - 1, "`{{*}}` before the end of {text:?}");
            continue;
        }
        let mut shape = SegmentShape::default();
        segment.bytes().for_each(|b| shape.add(b));
        assert!(
            !shape.is_identifier(),
            "identifier {segment:?} left in {text:?}"
        );
        // The README's promise, checked on its own: no run of four digits survives.
        let longest_digit_run = segment
            .split(|c: char| !c.is_ascii_digit())
            .map(str::len)
            .max()
            .unwrap_or(0);
        assert!(longest_digit_run < 4, "digits left in {text:?}");
    }
    let first = match segments[0] {
        "" | "{*}" => String::new(),
        first => format!("/{first}"),
    };
    assert_eq!(
        template.collapsed_text,
        format!("{first}/{{*}}"),
        "collapsed form of {text:?}"
    );
    assert_eq!(
        template.collapsed_hash,
        fnv_bytes(FNV_OFFSET, template.collapsed_text.as_bytes()),
        "the collapsed hash is not its text's: {:?}",
        template.collapsed_text
    );
}
