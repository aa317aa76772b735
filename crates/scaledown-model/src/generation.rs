//! Greedy and sampled decoding with a KV cache and stop tokens.

use crate::backend::is_cpu;
use crate::llama::{KvCache, Llama, PromptInput};
use burn::prelude::*;
use burn::tensor::ExecutionError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.
    pub top_p: f32,
    pub seed: u64,
    /// Compressed answers only: read the memory of the reranking head's `keep_top`
    /// best-scored documents alone (0, or a compressor without the head: every document's).
    pub keep_top: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            keep_top: 0,
        }
    }
}

/// Picks the next token from one position's logits.
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    rng: StdRng,
}

impl Sampler {
    pub fn new(config: &GenerationConfig) -> Self {
        Self {
            temperature: config.temperature,
            top_p: config.top_p,
            rng: StdRng::seed_from_u64(config.seed),
        }
    }

    pub fn next(&mut self, logits: &[f32]) -> u32 {
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l - max) / self.temperature).exp()))
            .collect();
        let total: f32 = probs.iter().map(|p| p.1).sum();
        probs.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        let mut kept = 0.0;
        let mut n = 0;
        for (_, p) in &probs {
            kept += p / total;
            n += 1;
            if kept >= self.top_p {
                break;
            }
        }
        let mut r = self.rng.random::<f32>() * probs[..n].iter().map(|p| p.1).sum::<f32>();
        for &(id, p) in &probs[..n] {
            if r < p {
                return id;
            }
            r -= p;
        }
        probs[n - 1].0
    }
}

/// Index of the largest value; the first one on ties, as torch.argmax.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Continues `prompt` (ids) until a stop token or `max_new_tokens`. The stop token, when
/// produced, is included in the output. Async because the browser's WebGPU cannot read results
/// synchronously; native callers block on it.
pub async fn generate(
    model: &Llama,
    prompt: &[u32],
    stop_ids: &[u32],
    config: &GenerationConfig,
    device: &Device,
) -> Result<Vec<u32>, ExecutionError> {
    let mut cache = KvCache::new(model.layers.len());
    let ids = Tensor::<1, Int>::from_data(
        TensorData::new(prompt.iter().map(|&i| i as i64).collect(), [prompt.len()]),
        device,
    );
    let logits = model.forward_last(ids.unsqueeze(), &mut cache);
    continue_from(model, logits, &mut cache, stop_ids, config, device).await
}

/// The KV cache of a prompt prefix that many prompts share (the chat's system turn), computed
/// once so that each prompt prefills only what follows it.
#[derive(Debug, Clone)]
pub struct PrefixCache {
    ids: Vec<u32>,
    cache: KvCache,
}

impl PrefixCache {
    pub fn new(model: &Llama, ids: &[u32], device: &Device) -> Self {
        let mut cache = KvCache::new(model.layers.len());
        if !ids.is_empty() {
            let t = Tensor::<1, Int>::from_data(
                TensorData::new(ids.iter().map(|&i| i as i64).collect(), [ids.len()]),
                device,
            );
            model.forward_embeds(model.embed(t.unsqueeze()), &mut cache, None, |_, _| {});
        }
        Self {
            ids: ids.to_vec(),
            cache,
        }
    }

    /// A cache to continue `prompt` from, and the part of `prompt` still to prefill: the
    /// shared prefix's cache when `prompt` starts with it, else an empty cache.
    pub fn start<'a>(&self, model: &Llama, prompt: &'a [u32]) -> (KvCache, &'a [u32]) {
        if prompt.starts_with(&self.ids) {
            (self.cache.clone(), &prompt[self.ids.len()..])
        } else {
            (KvCache::new(model.layers.len()), prompt)
        }
    }
}

/// [`generate`] after a shared prefix whose KV cache is already computed.
pub async fn generate_after(
    model: &Llama,
    prefix: &PrefixCache,
    prompt: &[u32],
    stop_ids: &[u32],
    config: &GenerationConfig,
    device: &Device,
) -> Result<Vec<u32>, ExecutionError> {
    let (mut cache, mut rest) = prefix.start(model, prompt);
    if rest.is_empty() {
        // The next token's logits need at least one position to run.
        (cache, rest) = (KvCache::new(model.layers.len()), prompt);
    }
    let ids = Tensor::<1, Int>::from_data(
        TensorData::new(rest.iter().map(|&i| i as i64).collect(), [rest.len()]),
        device,
    );
    let logits = model.forward_last(ids.unsqueeze(), &mut cache);
    continue_from(model, logits, &mut cache, stop_ids, config, device).await
}

/// Decodes from the last-position logits `[1, vocab]` of a prefilled cache; shared by plain
/// prompts and prompts whose documents entered as compressed embeddings.
pub async fn continue_from(
    model: &Llama,
    mut logits: Tensor<2>,
    cache: &mut KvCache,
    stop_ids: &[u32],
    config: &GenerationConfig,
    device: &Device,
) -> Result<Vec<u32>, ExecutionError> {
    let mut sampler = Sampler::new(config);
    let mut out = Vec::new();
    for step in 0..config.max_new_tokens {
        let values = read_floats(logits).await?;
        let next = sampler.next(&values);
        out.push(next);
        if stop_ids.contains(&next) || step + 1 == config.max_new_tokens {
            break;
        }
        let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![next as i64], [1, 1]), device);
        logits = model.forward_last(ids, cache);
    }
    Ok(out)
}

/// Continues several prompts at once, given as generator inputs of different lengths (token
/// embeddings, or compressed prompts): left-padded into one batch with the padding masked.
/// RoPE depends only on the distance between positions, so a padded row answers as it would
/// alone. Each row stops at its own stop token; returns each row's ids.
pub async fn generate_batch(
    model: &Llama,
    prompts: Vec<PromptInput>,
    stop_ids: &[u32],
    config: &GenerationConfig,
) -> Result<Vec<Vec<u32>>, ExecutionError> {
    generate_batch_streaming(model, prompts, stop_ids, config, |_, _| {}).await
}

/// [`generate_batch`], calling `on_token(row, id)` as each row's token is picked (a server
/// streams them); a row's calls end with its stop token or at `max_new_tokens`.
///
/// On the CPU the prompts are prefilled in groups of similar length ([`prefill_groups`]);
/// the decoding steps run as one batch, which a row leaves when it stops.
pub async fn generate_batch_streaming(
    model: &Llama,
    prompts: Vec<PromptInput>,
    stop_ids: &[u32],
    config: &GenerationConfig,
    on_token: impl FnMut(usize, u32),
) -> Result<Vec<Vec<u32>>, ExecutionError> {
    let Some(first) = prompts.first() else {
        return Ok(Vec::new());
    };
    let lens: Vec<usize> = prompts.iter().map(PromptInput::len).collect();
    let groups = prefill_groups(&lens, is_cpu(&first.embeds.device()));
    generate_in_groups(model, prompts, groups, stop_ids, config, on_token).await
}

/// [`generate_batch_streaming`] with the prompts prefilled in `groups` (rows of `prompts`,
/// each row in one group).
pub(crate) async fn generate_in_groups(
    model: &Llama,
    prompts: Vec<PromptInput>,
    groups: Vec<Vec<usize>>,
    stop_ids: &[u32],
    config: &GenerationConfig,
    mut on_token: impl FnMut(usize, u32),
) -> Result<Vec<Vec<u32>>, ExecutionError> {
    let batch = prompts.len();
    let device = prompts[0].embeds.device();
    let lens: Vec<usize> = prompts.iter().map(PromptInput::len).collect();
    let n = lens.iter().copied().max().unwrap_or(0);
    let is_pad = |b: usize, k: usize| k < n - lens[b];
    let mask = |values: Vec<bool>, rows: usize, q: usize, k: usize| {
        Tensor::<4, Bool>::from_data(TensorData::new(values, [rows, 1, q, k]), &device)
    };
    // Prefilled group by group, each group's rows padded to its longest; the groups' caches
    // are then moved on to `n` positions, so that they stack into one batch.
    let mut prompts: Vec<Option<PromptInput>> = prompts.into_iter().map(Some).collect();
    let (mut caches, mut last) = (Vec::new(), Vec::new());
    for group in &groups {
        let m = group.iter().map(|&b| lens[b]).max().unwrap_or(0);
        let before = n - m;
        let rows = group
            .iter()
            .map(|&b| prompts[b].take().expect("each row is in one group"))
            .collect();
        let (x, inserted) = PromptInput::stack(rows, m, true);
        // Real queries never see padding keys; padding queries may (they are never read,
        // and a row with every key masked could give NaN on some backends).
        let pad = |b: usize, k: usize| is_pad(b, before + k);
        let hidden: Vec<bool> = group
            .iter()
            .flat_map(|&b| (0..m).flat_map(move |q| (0..m).map(move |k| pad(b, k) && !pad(b, q))))
            .collect();
        let hidden = hidden
            .iter()
            .any(|&h| h)
            .then(|| mask(hidden, group.len(), m, m));
        let mut cache = KvCache::new(model.layers.len());
        let h = model.forward_input(x, inserted, &mut cache, hidden, |_, _| {});
        last.push(h.slice_dim(1, m - 1..m));
        caches.push(model.left_padded_cache(cache, before));
    }
    let mut cache = KvCache::stack(caches);
    let mut logits = model
        .logits(Tensor::cat(last, 0))
        .reshape([batch, model.vocab_size()]);
    let mut samplers: Vec<Sampler> = (0..batch).map(|_| Sampler::new(config)).collect();
    let mut out = vec![Vec::new(); batch];
    // The rows still decoding, as the cache holds them: a row that has stopped leaves the
    // batch, so that the rest do not carry its work to the longest answer's end.
    let mut rows: Vec<usize> = groups.into_iter().flatten().collect();
    for step in 0..config.max_new_tokens {
        let values = read_floats(logits).await?;
        let vocab = values.len() / rows.len();
        let mut going = Vec::with_capacity(rows.len());
        for (i, &b) in rows.iter().enumerate() {
            let id = samplers[b].next(&values[i * vocab..(i + 1) * vocab]);
            on_token(b, id);
            out[b].push(id);
            if !stop_ids.contains(&id) {
                going.push(i);
            }
        }
        if going.is_empty() || step + 1 == config.max_new_tokens {
            break;
        }
        if going.len() < rows.len() {
            cache = cache.select_rows(&going);
            rows = going.iter().map(|&i| rows[i]).collect();
        }
        let kv = cache.len() + 1;
        let decode_mask = rows
            .iter()
            .flat_map(|&b| (0..kv).map(move |k| is_pad(b, k)))
            .collect();
        let next = rows
            .iter()
            .map(|&b| out[b][out[b].len() - 1] as i64)
            .collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(next, [rows.len(), 1]), &device);
        let h = model.forward_embeds(
            model.embed(ids),
            &mut cache,
            Some(mask(decode_mask, rows.len(), 1, kv)),
            |_, _| {},
        );
        logits = model.logits(h).reshape([rows.len(), model.vocab_size()]);
    }
    Ok(out)
}

/// Most positions (padding included) that the CPU prefills as one group: past about this
/// many rows a product runs near the cores' peak, and a larger group only adds padding.
const PREFILL_POSITIONS: usize = 512;

/// The rows of a batch that are prefilled together: elsewhere than on the CPU, all of them.
/// On the CPU one long prompt's products already run near the cores' peak and padding is
/// work spent on nothing, but a short prompt's products run at half of it (SmolLM2's weights
/// are read and widened once per product): prompts are taken longest first, and a group
/// grows while it holds at most [`PREFILL_POSITIONS`] positions, a fifth of them padding.
pub(crate) fn prefill_groups(lens: &[usize], cpu: bool) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    if !cpu {
        return vec![order];
    }
    order.sort_by_key(|&b| std::cmp::Reverse(lens[b]));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for b in order {
        match groups.last_mut() {
            Some(g)
                if (g.len() + 1) * lens[g[0]] <= PREFILL_POSITIONS
                    && 4 * (g.len() + 1) * lens[g[0]]
                        <= 5 * (g.iter().map(|&r| lens[r]).sum::<usize>() + lens[b]) =>
            {
                g.push(b)
            }
            _ => groups.push(vec![b]),
        }
    }
    groups
}

/// A float tensor's values, read from the device without blocking (WebGPU needs that).
pub async fn read_floats<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, ExecutionError> {
    let data = t.into_data_async().await?;
    Ok(data
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_prefills_prompts_of_similar_length_together() {
        // Longest first; 8 joins 10 and 9 (3 of 30 positions padding), 3 would pad 10 more.
        assert_eq!(
            prefill_groups(&[10, 3, 9, 8], true),
            vec![vec![0, 2, 3], vec![1]]
        );
        // Equal lengths, but at most PREFILL_POSITIONS positions a group.
        let long = PREFILL_POSITIONS / 2;
        assert_eq!(
            prefill_groups(&[long, long, long], true),
            vec![vec![0, 1], vec![2]]
        );
        assert_eq!(prefill_groups(&[10, 3, 9], false), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn greedy_and_tiny_top_p_pick_the_argmax() {
        let logits = [0.1, 2.0, 1.9, -3.0];
        assert_eq!(argmax(&logits), 1);
        let mut greedy = Sampler::new(&GenerationConfig::default());
        assert_eq!(greedy.next(&logits), 1);
        let mut nucleus = Sampler::new(&GenerationConfig {
            temperature: 1.0,
            top_p: 1e-6,
            ..Default::default()
        });
        assert_eq!(nucleus.next(&logits), 1);
    }

    #[test]
    fn sampling_is_seeded_and_follows_the_distribution() {
        let logits = [0.0, (3.0f32).ln(), f32::NEG_INFINITY];
        let config = GenerationConfig {
            temperature: 1.0,
            seed: 7,
            ..Default::default()
        };
        let draw = |c: &GenerationConfig| {
            let mut s = Sampler::new(c);
            (0..4000).map(|_| s.next(&logits)).collect::<Vec<_>>()
        };
        let a = draw(&config);
        assert_eq!(a, draw(&config), "same seed, same tokens");
        assert!(!a.contains(&2), "a token of probability 0 is never drawn");
        let ones = a.iter().filter(|&&t| t == 1).count() as f32 / a.len() as f32;
        assert!((ones - 0.75).abs() < 0.03, "P(1) = 0.75, drew {ones}");
    }
}
