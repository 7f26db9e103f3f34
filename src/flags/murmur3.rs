//! MurmurHash3, x86 32-bit variant (Austin Appleby's public-domain
//! algorithm): the hash Unleash buckets clients with, so a percentage set
//! here selects the same clients an Unleash SDK would.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// The 32-bit MurmurHash3 of `data` with `seed`.
pub fn murmur3_x86_32(data: &[u8], seed: u32) -> u32 {
    let mut h = seed;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        h ^= mix_k(k);
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        // The last 1–3 bytes, little-endian, mixed without the rotation step.
        let k = tail.iter().rev().fold(0u32, |k, &b| (k << 8) | u32::from(b));
        h ^= mix_k(k);
    }
    h ^= data.len() as u32;
    fmix32(h)
}

fn mix_k(k: u32) -> u32 {
    k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
}

/// The finalizer: every input bit affects every output bit.
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published reference values of MurmurHash3_x86_32 (input, seed, hash),
    /// covering every tail length and the seed handling.
    const VECTORS: &[(&[u8], u32, u32)] = &[
        (b"", 0, 0),
        (b"", 1, 0x514e_28b7),
        (b"", 0xffff_ffff, 0x81f1_6f39),
        (b"\0\0\0\0", 0, 0x2362_f9de),
        (b"\xff\xff\xff\xff", 0, 0x7629_3b50),
        (b"\x21\x43\x65\x87", 0, 0xf55b_516b),
        (b"\x21\x43\x65\x87", 0x5082_edee, 0x2362_f9de),
        (b"\x21\x43\x65", 0, 0x7e4a_8634),
        (b"\x21\x43", 0, 0xa0f7_b07a),
        (b"\x21", 0, 0x7266_1cf4),
        (b"aaaa", 0x9747_b28c, 0x5a97_808a),
        (b"aaa", 0x9747_b28c, 0x283e_0130),
        (b"aa", 0x9747_b28c, 0x5d21_1726),
        (b"a", 0x9747_b28c, 0x7fa0_9ea6),
        (b"abcd", 0x9747_b28c, 0xf047_8627),
        (b"Hello, world!", 0x9747_b28c, 0x2488_4cba),
        (b"The quick brown fox jumps over the lazy dog", 0x9747_b28c, 0x2fa8_26cd),
        (b"The quick brown fox jumps over the lazy dog", 0, 0x2e4f_f723),
    ];

    #[test]
    fn matches_the_published_reference_values() {
        for &(input, seed, expected) in VECTORS {
            assert_eq!(
                murmur3_x86_32(input, seed),
                expected,
                "murmur3({:?}, {seed:#x})",
                String::from_utf8_lossy(input)
            );
        }
    }
}
