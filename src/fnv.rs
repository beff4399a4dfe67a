//! 64-bit FNV-1a (offset basis 0xcbf29ce484222325, prime 0x100000001b3):
//! stable on every platform and version and keyless, which is what sticky
//! sampling (`sample_by`, whose answers are part of the contract) and the
//! comparison's body hashes need.

use std::hash::Hasher;

pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv64 {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}
