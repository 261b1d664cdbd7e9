//! Masking: client payloads arrive XORed with a 4-byte key (RFC 6455 §5.3).

/// The mask as seen from payload byte `offset` on.
pub(super) fn rotate_mask(mask: [u8; 4], offset: usize) -> [u8; 4] {
    let mut rotated = mask;
    rotated.rotate_left(offset % 4);
    rotated
}

/// XORs `buf` with the repeating 4-byte `mask`, eight bytes at a time.
pub(super) fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let (chunks, tail) = buf.as_chunks_mut::<8>();
    for chunk in chunks {
        *chunk = (u64::from_ne_bytes(*chunk) ^ wide).to_ne_bytes();
    }
    // The tail starts at a multiple of 8, so the mask phase restarts at 0.
    for (byte, m) in tail.iter_mut().zip(mask.iter().cycle()) {
        *byte ^= m;
    }
}
