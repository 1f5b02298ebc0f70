//! Route templating: the byte-at-a-time templater the kernel runs, and the agent's side of it
//! (the text of a route, from the same bytes).

use super::*;
use crate::words::zero_words;

/// FNV-1a, 64 bits: small, byte-at-a-time, the same in the kernel and the agent.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[inline(always)]
pub const fn fnv(hash: u64, byte: u8) -> u64 {
    (hash ^ byte as u64).wrapping_mul(FNV_PRIME)
}

pub const fn fnv_bytes(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        hash = fnv(hash, bytes[i]);
        i += 1;
    }
    hash
}

/// The placeholder for a path segment that is an identifier.
pub const ID_PLACEHOLDER: &[u8] = b"{id}";
/// The placeholder that ends a route collapsed under the route budget, or a cut-off path.
pub const REST_PLACEHOLDER: &[u8] = b"{*}";
/// The route of requests that fit no budget.
pub const OVERFLOW_ROUTE: &str = "__overflow__";
pub const OVERFLOW_ROUTE_HASH: u64 = fnv_bytes(FNV_OFFSET, OVERFLOW_ROUTE.as_bytes());

/// What a path segment looked like, accumulated byte by byte (no buffer: the kernel cannot
/// afford one per request).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentShape {
    pub len: u16,
    pub digits: u16,
    pub uppers: u16,
    pub lowers: u16,
    pub dashes: u16,
    /// Bytes that are neither hex digits nor `-`.
    pub non_hex: u16,
    /// Bytes outside `[A-Za-z0-9-_.~]`, e.g. `@`, `%`, `=`, `+`.
    pub unusual: u16,
    /// `run::*`: what the last bytes were, to find digits between letters.
    pub run: u16,
    /// Runs of digits with a letter right before and right after (`x7kq2mzp`).
    pub inner_digit_runs: u16,
    pub _reserved: [u16; 3],
}

/// Where [`SegmentShape`] is in the segment's letters and digits.
pub mod run {
    /// At the start, or after a byte that is neither a letter nor a digit.
    pub const NONE: u16 = 0;
    pub const LETTERS: u16 = 1;
    /// Digits that came right after a letter: a letter next makes them inner digits.
    pub const DIGITS_AFTER_LETTER: u16 = 2;
    pub const DIGITS: u16 = 3;
}

impl SegmentShape {
    #[inline(always)]
    pub fn add(&mut self, b: u8) {
        self.len += 1;
        if b.is_ascii_digit() {
            self.digits += 1;
        } else if b.is_ascii_uppercase() {
            self.uppers += 1;
        } else if b.is_ascii_lowercase() {
            self.lowers += 1;
        } else if b == b'-' {
            self.dashes += 1;
        }
        if !(b.is_ascii_hexdigit() || b == b'-') {
            self.non_hex += 1;
        }
        if !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')) {
            self.unusual += 1;
        }
        self.run = if b.is_ascii_alphabetic() {
            if self.run == run::DIGITS_AFTER_LETTER {
                self.inner_digit_runs += 1;
            }
            run::LETTERS
        } else if b.is_ascii_digit() {
            match self.run {
                run::LETTERS | run::DIGITS_AFTER_LETTER => run::DIGITS_AFTER_LETTER,
                _ => run::DIGITS,
            }
        } else {
            run::NONE
        };
    }

    /// Whether the segment names a resource instance rather than a kind of resource:
    /// numbers, UUIDs, hex ids and hashes, things with several digits (`order-12345`,
    /// `2024-01-31`), random-looking tokens (long mixes of letters and digits, digits between
    /// letters, mixed case), e-mail addresses and other encoded values, and anything too long
    /// to be a route's name.
    ///
    /// Tokens are secrets as often as ids: a literal segment ends up in a label, so the rules
    /// lean towards `{id}`. What they keep are words, words with a version (`v2`, `oauth2`,
    /// `v1beta1`) and short codes; a random token of letters only reads like a word and stays.
    #[inline(always)]
    pub fn is_identifier(&self) -> bool {
        let len = self.len;
        if len == 0 {
            return false;
        }
        let letters = self.uppers + self.lowers;
        let all_digits = self.digits == len;
        let hex_id = self.non_hex == 0 && self.dashes == 0 && len >= 8 && self.digits > 0;
        // Hex without a digit: short ones are words (`cafe`, `deadbeef`), long ones are not.
        let long_hex = self.non_hex == 0 && self.dashes == 0 && len >= 16;
        let uuid = len == 36 && self.dashes == 4 && self.non_hex == 0;
        let many_digits = self.digits >= 4;
        // Random base-36/62 keys: a long segment mixing letters and digits, or a shorter one
        // with digits inside letters (short versions stay: `oauth2`, `v1beta1`, `h264`).
        let long_mix = len >= 12 && self.digits > 0 && letters > 0;
        let inner_digits = len >= 9 && self.inner_digit_runs > 0;
        // Random tokens mix cases far more than camelCase words do.
        let mixed_case_token = len >= 16 && self.uppers * 4 >= len && self.lowers > 0;
        let encoded = self.unusual > 0;
        all_digits
            || hex_id
            || long_hex
            || uuid
            || many_digits
            || long_mix
            || inner_digits
            || mixed_case_token
            || encoded
            || len > 64
    }
}

/// Where a byte leaves the templater.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fed {
    /// Part of the path: feed the next one.
    More,
    /// The path ended before this byte (space, `?`, `#`, or a control byte).
    End,
}

/// Turns a request path into a route template, one byte at a time, hashing the template as
/// it goes: `/users/123/orders?x=1` -> `/users/{id}/orders`. Query and fragment are dropped,
/// empty segments (`//`, a trailing `/`) are ignored.
///
/// The kernel keeps only the hash; the agent rebuilds the text from the same bytes with a
/// [`TemplateSink`] that records it, and checks that the hashes agree.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteTemplater {
    /// Hash of the template up to the last finished segment.
    pub hash: u64,
    /// Hash of the template if the current segment stays literal.
    pub literal_hash: u64,
    /// Hash of the template after the first segment (for `/<first>/{*}`), 0 until then.
    pub first_segment_hash: u64,
    pub shape: SegmentShape,
    pub path_len: u16,
    pub segments: u16,
    pub ended: u16,
    pub truncated: u16,
}

/// Receives what the templater decides; the kernel passes `()` and keeps only hashes.
pub trait TemplateSink {
    fn segment_byte(&mut self, _b: u8) {}
    fn segment_end(&mut self, _placeholder: Option<&'static [u8]>) {}
}

impl TemplateSink for () {}

impl Default for RouteTemplater {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteTemplater {
    /// `new()` again, in place: built on the stack and copied, the mostly-zero value would
    /// become a `memset` call in the kernel (see `words`).
    #[inline(always)]
    pub fn reset(&mut self) {
        const NEW: RouteTemplater = RouteTemplater::new();
        zero_words(self);
        self.hash = NEW.hash;
        self.literal_hash = NEW.literal_hash;
    }

    pub const fn new() -> Self {
        Self {
            hash: FNV_OFFSET,
            literal_hash: fnv(FNV_OFFSET, b'/'),
            first_segment_hash: 0,
            shape: SegmentShape {
                len: 0,
                digits: 0,
                uppers: 0,
                lowers: 0,
                dashes: 0,
                non_hex: 0,
                unusual: 0,
                run: run::NONE,
                inner_digit_runs: 0,
                _reserved: [0; 3],
            },
            path_len: 0,
            segments: 0,
            ended: 0,
            truncated: 0,
        }
    }

    /// Takes the next byte of the request target.
    #[inline(always)]
    pub fn feed<S: TemplateSink>(&mut self, b: u8, sink: &mut S) -> Fed {
        if self.ended != 0 {
            return Fed::End;
        }
        if b <= b' ' || b == b'?' || b == b'#' || b == 0x7f {
            self.ended = 1;
            return Fed::End;
        }
        if self.path_len as usize >= MAX_PATH_LEN {
            self.truncated = 1;
            self.ended = 1;
            return Fed::End;
        }
        self.path_len += 1;
        if b == b'/' {
            self.end_segment(sink);
        } else {
            self.shape.add(b);
            self.literal_hash = fnv(self.literal_hash, b);
            sink.segment_byte(b);
        }
        Fed::More
    }

    #[inline(always)]
    fn end_segment<S: TemplateSink>(&mut self, sink: &mut S) {
        if self.shape.len == 0 {
            return; // empty segment: `//` or the leading `/`
        }
        if self.shape.is_identifier() {
            self.hash = fnv_bytes(fnv(self.hash, b'/'), ID_PLACEHOLDER);
            sink.segment_end(Some(ID_PLACEHOLDER));
        } else {
            self.hash = self.literal_hash;
            sink.segment_end(None);
        }
        if self.segments == 0 {
            self.first_segment_hash = self.hash;
        }
        self.segments += 1;
        zero_words(&mut self.shape);
        self.literal_hash = fnv(self.hash, b'/');
    }

    /// Closes the last segment; returns the hash of the template. A path cut at
    /// `MAX_PATH_LEN` ends in `/{*}` instead of its last, unfinished segment: a prefix of a
    /// token would be too short to look like one.
    #[inline(always)]
    pub fn finish<S: TemplateSink>(&mut self, sink: &mut S) -> u64 {
        if self.truncated != 0 {
            self.hash = fnv_bytes(fnv(self.hash, b'/'), REST_PLACEHOLDER);
            sink.segment_end(Some(REST_PLACEHOLDER));
        } else {
            self.end_segment(sink);
        }
        if self.segments == 0 && self.truncated == 0 {
            self.hash = fnv(FNV_OFFSET, b'/'); // the root
        }
        self.ended = 1;
        self.hash
    }

    /// The route `/<first segment>/{*}` that stands for this one when the budget is spent.
    #[inline(always)]
    pub fn collapsed_hash(&self) -> u64 {
        let base = if self.first_segment_hash == 0 {
            FNV_OFFSET
        } else {
            self.first_segment_hash
        };
        fnv_bytes(fnv(base, b'/'), REST_PLACEHOLDER)
    }
}

/// How many of a budget's routes may be templates; the rest is kept for collapsed forms
/// (`/<first segment>/{*}`), so that one fanned-out segment ends in one collapsed route
/// rather than in `__overflow__`. A budget allows at most `budget` routes plus
/// `__overflow__`.
#[inline(always)]
pub const fn template_allowance(budget: u32) -> u32 {
    let templates = budget - budget / 4;
    if templates == 0 { 1 } else { templates }
}

/// The agent's side of templating: the route's text and hashes, from the same bytes the kernel
/// templated. (`None` for a target that is not a path.)
#[cfg(any(test, feature = "user"))]
pub fn template_route(target: &[u8]) -> Template {
    template_with(target, false)
}

/// The route of a path that went on past the `MAX_PATH_LEN` bytes of `target`: what the
/// kernel templated when it saw more than it announced. (An announcement of that many bytes
/// is either; the hash tells which.)
#[cfg(any(test, feature = "user"))]
pub fn template_cut_route(target: &[u8]) -> Template {
    template_with(target, true)
}

#[cfg(any(test, feature = "user"))]
fn template_with(target: &[u8], cut: bool) -> Template {
    let mut text = TextSink::default();
    let mut templater = RouteTemplater::new();
    for &b in target {
        if templater.feed(b, &mut text) == Fed::End {
            break;
        }
    }
    if cut && templater.ended == 0 && templater.path_len as usize >= MAX_PATH_LEN {
        templater.truncated = 1;
    }
    let hash = templater.finish(&mut text);
    let first = text.first_segment.clone();
    Template {
        text: if text.out.is_empty() {
            alloc::string::String::from("/")
        } else {
            text.out
        },
        hash,
        collapsed_text: alloc::format!("{first}/{{*}}"),
        collapsed_hash: templater.collapsed_hash(),
    }
}

#[cfg(any(test, feature = "user"))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub text: alloc::string::String,
    pub hash: u64,
    /// `/<first segment>/{*}`, what the route becomes once the budget is spent.
    pub collapsed_text: alloc::string::String,
    pub collapsed_hash: u64,
}

#[cfg(any(test, feature = "user"))]
#[derive(Default)]
struct TextSink {
    out: alloc::string::String,
    segment: alloc::vec::Vec<u8>,
    first_segment: alloc::string::String,
}

#[cfg(any(test, feature = "user"))]
impl TemplateSink for TextSink {
    fn segment_byte(&mut self, b: u8) {
        self.segment.push(b);
    }
    fn segment_end(&mut self, placeholder: Option<&'static [u8]>) {
        let bytes = placeholder.unwrap_or(&self.segment);
        self.out.push('/');
        // Segments are bytes; a route label is text: anything not UTF-8 is replaced.
        self.out
            .push_str(&alloc::string::String::from_utf8_lossy(bytes));
        self.segment.clear();
        // A path cut before its first segment ended has none: it collapses to `/{*}`.
        if self.first_segment.is_empty() && placeholder != Some(REST_PLACEHOLDER) {
            self.first_segment = self.out.clone();
        }
    }
}
