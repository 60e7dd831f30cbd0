//! Text bounded to what the API server stores: it refuses an Event whose note is over
//! 1,024 bytes, and a condition message is documented to hold at most 32 KiB. A longer
//! text is cut rather than lost with the whole write; the full text stays in status
//! (`blockedReasons`, the node records), which has no such bound.

use std::borrow::Cow;

/// Longest Event note the API server accepts (events.k8s.io/v1 `note`), in bytes.
pub const EVENT_NOTE_BYTES: usize = 1024;
/// Longest condition message (`metav1.Condition.message`), in bytes.
pub const CONDITION_MESSAGE_BYTES: usize = 32 * 1024;

/// What a cut text ends with.
const CUT_MARKER: &str = " … [cut; the full text is in the K8sUpgrade's status]";

/// `text` if it fits in `max_bytes`, otherwise its head cut on a character boundary and
/// followed by a marker, the whole at most `max_bytes` long.
pub fn bounded(text: &str, max_bytes: usize) -> Cow<'_, str> {
    if text.len() <= max_bytes {
        return Cow::Borrowed(text);
    }
    let mut cut = max_bytes.saturating_sub(CUT_MARKER.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}{CUT_MARKER}", text[..cut].trim_end()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_text_that_fits_is_untouched() {
        assert!(matches!(bounded("ok", 10), Cow::Borrowed("ok")));
        let exact = "x".repeat(EVENT_NOTE_BYTES);
        assert_eq!(bounded(&exact, EVENT_NOTE_BYTES), exact);
    }

    #[test]
    fn a_long_text_is_cut_with_a_marker() {
        let long = "node w-1 is NotReady; ".repeat(100);
        let cut = bounded(&long, EVENT_NOTE_BYTES);
        assert!(cut.len() <= EVENT_NOTE_BYTES);
        assert!(cut.starts_with("node w-1 is NotReady; node"));
        assert!(cut.ends_with(CUT_MARKER), "{cut}");
    }

    proptest! {
        #[test]
        fn never_longer_than_the_bound_and_always_a_prefix(
            text in "[a-zé€😀 ]{0,600}",
            max in CUT_MARKER.len()..700usize,
        ) {
            let cut = bounded(&text, max);
            prop_assert!(cut.len() <= max);
            let head = cut.strip_suffix(CUT_MARKER).unwrap_or(&cut);
            prop_assert!(text.starts_with(head));
        }
    }
}
