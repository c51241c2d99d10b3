//! What a benchmark's writes hold. Storage that compresses is only measured honestly with
//! data of a known kind: one repeated byte (compresses to almost nothing), noise (does not
//! compress), or English-like text (compresses about as real text does, block by block).
//!
//! Noise and text come from a pool of distinct 4 KiB blocks that each write takes the next
//! ones of: a compressor never sees the same block twice until the pool wraps, so its ratio
//! is not flattered by repeats (and a dictionary is not trained on the very blocks it then
//! compresses).

use super::Rng;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// The kind of data the write buffers hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    /// Every byte 0x5a.
    Pattern = 0,
    /// xorshift noise.
    Random = 1,
    /// Sentences of common English words, drawn with a skew toward the commonest.
    Text = 2,
}

impl DataKind {
    /// The kind a benchmark's `--data` names.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "pattern" => Some(Self::Pattern),
            "random" => Some(Self::Random),
            "text" => Some(Self::Text),
            _ => None,
        }
    }
}

static KIND: AtomicU8 = AtomicU8::new(DataKind::Pattern as u8);

/// Sets what every later write buffer of this process holds.
pub fn set_data_kind(kind: DataKind) {
    KIND.store(kind as u8, Ordering::Relaxed);
}

/// Bytes of distinct data writes draw from: as much as the benchmarks' usual disk, so a fill
/// writes no block twice.
const POOL_BYTES: usize = 64 << 20;
/// Granule of the pool's cursor: one guest block.
const POOL_BLOCK: usize = 4096;

static POOL: OnceLock<Vec<u8>> = OnceLock::new();
/// The pool block the next write starts at (wraps).
static CURSOR: AtomicUsize = AtomicUsize::new(0);

/// Whether each write takes fresh bytes ([`fill_data`] before every write): every kind but
/// the pattern, which is one byte everywhere.
pub fn varies() -> bool {
    KIND.load(Ordering::Relaxed) != DataKind::Pattern as u8
}

/// Fills a write buffer with data of the kind set: the pattern, or the next `buf.len()`
/// bytes of the pool (made on first use, so before any measurement: connecting fills).
pub fn fill_data(buf: &mut [u8]) {
    if !varies() {
        buf.fill(0x5a);
        return;
    }
    let pool = POOL.get_or_init(make_pool);
    let blocks = pool.len() / POOL_BLOCK;
    let mut at = 0;
    while at < buf.len() {
        let want = (buf.len() - at).div_ceil(POOL_BLOCK).min(blocks);
        let start = CURSOR.fetch_add(want, Ordering::Relaxed) % blocks;
        // A run that would pass the pool's end starts over at its beginning.
        let start = if start + want > blocks { 0 } else { start };
        let n = (want * POOL_BLOCK).min(buf.len() - at);
        let from = start * POOL_BLOCK;
        buf[at..at + n].copy_from_slice(&pool[from..from + n]);
        at += n;
    }
}

/// The pool of the kind set: one stream of noise or of text, cut into distinct blocks.
fn make_pool() -> Vec<u8> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut pool = vec![0u8; POOL_BYTES];
    if KIND.load(Ordering::Relaxed) == DataKind::Text as u8 {
        fill_text(&mut pool, &mut rng);
    } else {
        pool.iter_mut().for_each(|b| *b = rng.byte());
    }
    pool
}

/// Bytes and small numbers from the benchmarks' xorshift generator.
impl Rng {
    fn byte(&mut self) -> u8 {
        (self.next() >> 24) as u8
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() >> 33) as usize % n
    }
}

/// Common English words, separated by spaces; a sentence draws from them with the product of two uniform picks,
/// so the first words come far oftener than the last (as in real text).
const WORDS: &str = "\
    the of and to a in is that it for was on are as with his they at be this from have or by \
    one had not but what all were when we there can an your which their said if do will each \
    about how up out them then she many some so these would other into has more her two like \
    him see time could no make than first been its who now people my made over did down only \
    way find use may water long little very after words called just where most know get \
    through back much before go good new write our used me man too any day same right look \
    think also around another came come work three word must because does part even place \
    well such here take why things help put years different away again off went old number \
    great tell men say small every found still between name should home big give air line \
    set own under read last never us left end along while might next sound below saw \
    something thought both few those always looked show large often together asked house \
    world going want school important until form food keep children feet land side without \
    boy once animals life enough took sometimes four head above kind began almost live page \
    got earth need far hand high year mother light country father let night following \
    picture being study second eyes soon times story since white days ever paper hard near \
    sentence better best across during today however sure means knew try told young miles \
    sun ways thing whole hear example heard several change answer room sea against top \
    turned learn point city play toward five himself usually";

fn fill_text(buf: &mut [u8], rng: &mut Rng) {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let end = buf.len();
    let mut at = 0;
    let mut put = |bytes: &[u8], at: &mut usize| {
        let n = bytes.len().min(end - *at);
        buf[*at..*at + n].copy_from_slice(&bytes[..n]);
        *at += n;
    };
    while at < end {
        let len = 6 + rng.below(13);
        for i in 0..len {
            let pick = rng.below(words.len()) * rng.below(words.len()) / words.len();
            let word = words[pick].as_bytes();
            if i == 0 {
                put(&[word[0].to_ascii_uppercase()], &mut at);
                put(&word[1..], &mut at);
            } else {
                put(b" ", &mut at);
                put(word, &mut at);
            }
        }
        put(if rng.below(5) == 0 { b".\n" } else { b". " }, &mut at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_words_and_sentences_and_noise_is_not_the_pattern() {
        let mut text = vec![0u8; 4096];
        let mut rng = Rng(7);
        fill_text(&mut text, &mut rng);
        assert!(
            text.iter()
                .all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\n')
        );
        let words = text.split(|b| *b == b' ').count();
        assert!(words > 400, "{words} words in 4 KiB");
        assert!(text.windows(2).any(|w| w == b". "));
        assert_eq!(DataKind::parse("text"), Some(DataKind::Text));
        assert_eq!(DataKind::parse("zeros"), None);
    }

    /// Successive writes never repeat a block while the pool lasts, even across requests.
    #[test]
    fn successive_writes_hold_distinct_blocks() {
        set_data_kind(DataKind::Text);
        let mut seen = std::collections::HashSet::new();
        let mut buf = vec![0u8; 4 * POOL_BLOCK];
        for _ in 0..512 {
            fill_data(&mut buf[..POOL_BLOCK]);
            assert!(
                seen.insert(buf[..POOL_BLOCK].to_vec()),
                "a 4 KiB write repeated"
            );
            fill_data(&mut buf);
            for block in buf.chunks(POOL_BLOCK) {
                assert!(
                    seen.insert(block.to_vec()),
                    "a block of a 16 KiB write repeated"
                );
            }
        }
        set_data_kind(DataKind::Pattern);
        fill_data(&mut buf);
        assert!(buf.iter().all(|b| *b == 0x5a));
    }
}
