//! Incremental UTF-8 validation for fragmented text messages.
//!
//! [`Utf8Validator::feed`] fails as soon as the bytes seen so far cannot be the prefix of valid
//! UTF-8 (RFC 6455 §8.1 "fail fast"), not only at the end of the message. A code point split
//! across fragments is carried in a 4-byte buffer; no allocation.

use std::fmt;

/// The text is not valid UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Utf8Error;

impl fmt::Display for Utf8Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid UTF-8")
    }
}

impl std::error::Error for Utf8Error {}

/// Validator state: the bytes of a code point not yet complete.
#[derive(Clone, Copy, Debug, Default)]
pub struct Utf8Validator {
    pending: [u8; 4],
    pending_len: u8,
}

/// Length of the sequence that starts with `first`, 0 when `first` cannot start one.
fn sequence_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 0,
    }
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub fn new() -> Utf8Validator {
        Utf8Validator::default()
    }

    /// Validates the next chunk. Errors as soon as any prefix of the stream is invalid.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), Utf8Error> {
        if self.pending_len > 0 {
            let have = self.pending_len as usize;
            let need = sequence_len(self.pending[0]);
            let take = (need - have).min(data.len());
            self.pending[have..have + take].copy_from_slice(&data[..take]);
            let now = have + take;
            data = &data[take..];
            match std::str::from_utf8(&self.pending[..now]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_none() => {
                    // Still a valid prefix; `data` is exhausted.
                    self.pending_len = now as u8;
                    return Ok(());
                }
                Err(_) => return Err(Utf8Error),
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                // The tail is a valid prefix of a code point (std checks the second byte's
                // range, so overlongs, surrogates and > U+10FFFF are already rejected).
                let tail = &data[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(Utf8Error),
        }
    }

    /// Ends the message: errors when a code point is left incomplete. Resets the state.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let incomplete = self.pending_len > 0;
        self.pending_len = 0;
        if incomplete {
            Err(Utf8Error)
        } else {
            Ok(())
        }
    }

    /// Forgets any partial code point (for a new message).
    pub fn reset(&mut self) {
        self.pending_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_all_splits(bytes: &[u8]) -> bool {
        let whole = std::str::from_utf8(bytes).is_ok();
        for split in 0..=bytes.len() {
            let mut v = Utf8Validator::new();
            let r = v
                .feed(&bytes[..split])
                .and_then(|_| v.feed(&bytes[split..]))
                .and_then(|_| v.finish());
            assert_eq!(r.is_ok(), whole, "{bytes:x?} split {split}");
        }
        // One byte at a time.
        let mut v = Utf8Validator::new();
        let r = bytes
            .iter()
            .try_for_each(|b| v.feed(std::slice::from_ref(b)))
            .and_then(|_| v.finish());
        assert_eq!(r.is_ok(), whole, "{bytes:x?} bytewise");
        whole
    }

    #[test]
    fn valid_and_invalid_across_splits() {
        assert!(check_all_splits("Hello-µ@ßöäüàá-UTF-8!!".as_bytes()));
        assert!(check_all_splits("κόσμε 𝄞 \u{10FFFF}".as_bytes()));
        assert!(!check_all_splits(&[
            0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80,
            0x65, 0x64, 0x69, 0x74, 0x65, 0x64
        ]));
        assert!(!check_all_splits(&[0xf4, 0x90, 0x80, 0x80]));
        assert!(!check_all_splits(&[0xc0, 0xaf]));
        assert!(!check_all_splits(&[0xe0, 0x80, 0xaf]));
        assert!(!check_all_splits(&[0xf0, 0x9f, 0x98]));
        assert!(!check_all_splits(&[0xff]));
    }

    #[test]
    fn fails_on_first_invalid_prefix() {
        // Autobahn 6.4.1: κόσμε then a byte that makes the prefix invalid (U+110000 start).
        let mut v = Utf8Validator::new();
        assert!(v.feed("κόσμε".as_bytes()).is_ok());
        assert_eq!(v.feed(&[0xf4]), Ok(()));
        assert_eq!(v.feed(&[0x90]), Err(Utf8Error));
        // A surrogate is rejected at its second byte.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xed]), Ok(()));
        assert_eq!(v.feed(&[0xa0]), Err(Utf8Error));
    }
}
