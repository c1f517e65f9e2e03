//! Payload masking (RFC 6455 §5.3): XOR with a 4-byte key, cycling from the first payload byte.
//!
//! [`apply_mask`] works eight bytes at a time on unaligned `u64` loads (safe code: the compiler
//! turns the `from_ne_bytes`/`to_ne_bytes` pair into plain loads and stores and vectorises the
//! loop); [`apply_mask_bytewise`] is the reference it is tested against at every length and
//! alignment.

/// XORs `buf` with `key` repeated, starting at key index 0. Fast path: 8 bytes per step.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(32);
    for chunk in &mut chunks {
        // Four independent words per step keep the loop wide enough to vectorise.
        for lane in chunk.chunks_exact_mut(8) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(lane);
            lane.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
        }
    }
    let rest = chunks.into_remainder();
    let mut words = rest.chunks_exact_mut(8);
    for lane in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(lane);
        lane.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    // Every chunk above is a multiple of 4 bytes long, so the key phase restarts at 0 here.
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// Reference implementation: one byte at a time.
pub fn apply_mask_bytewise(buf: &mut [u8], key: [u8; 4]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_matches_bytewise_small() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..=70 {
            let orig: Vec<u8> = (0..len as u32).map(|i| (i * 7 + 3) as u8).collect();
            let mut a = orig.clone();
            let mut b = orig.clone();
            apply_mask(&mut a, key);
            apply_mask_bytewise(&mut b, key);
            assert_eq!(a, b, "len {len}");
            apply_mask(&mut a, key);
            assert_eq!(a, orig, "mask twice is identity, len {len}");
        }
    }

    #[test]
    fn rfc_example_hello() {
        // RFC 6455 §5.7: masked "Hello".
        let mut p = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut p, [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(&p, b"Hello");
    }
}
