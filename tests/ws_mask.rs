//! The fast unmask equals the byte loop at every length 0..=300, every alignment offset 0..8
//! and a few large sizes.

use tether::ws::mask::{apply_mask, apply_mask_bytewise};

const KEYS: [[u8; 4]; 4] = [
    [0, 0, 0, 0],
    [0x37, 0xfa, 0x21, 0x3d],
    [0xff; 4],
    [1, 2, 3, 4],
];

fn check(len: usize, offset: usize, key: [u8; 4]) {
    let backing: Vec<u8> = (0..len + offset).map(|i| (i * 31 + 7) as u8).collect();
    let mut fast = backing.clone();
    let mut slow = backing.clone();
    apply_mask(&mut fast[offset..], key);
    apply_mask_bytewise(&mut slow[offset..], key);
    assert_eq!(fast, slow, "len {len} offset {offset} key {key:x?}");
    assert_eq!(
        fast[..offset],
        backing[..offset],
        "bytes before the slice untouched"
    );
}

#[test]
fn every_length_and_alignment() {
    for key in KEYS {
        for offset in 0..8 {
            for len in 0..=300 {
                check(len, offset, key);
            }
        }
    }
}

#[test]
fn large_sizes() {
    for len in [4096, 65536, 65536 + 3, (1 << 20) + 5] {
        for offset in [0, 1, 5] {
            check(len, offset, [0x37, 0xfa, 0x21, 0x3d]);
        }
    }
}

#[test]
fn masking_twice_restores() {
    let orig: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let mut buf = orig.clone();
    apply_mask(&mut buf[3..], [9, 8, 7, 6]);
    assert_ne!(buf, orig);
    apply_mask(&mut buf[3..], [9, 8, 7, 6]);
    assert_eq!(buf, orig);
}
