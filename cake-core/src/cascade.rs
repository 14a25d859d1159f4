//! [`PolicyCompressor`]: a [`Policy`] driven through the model's [`KvCompressor`] hooks,
//! with cascading (section 5) or one-shot eviction after prefill, decoding-time eviction
//! (section 6), and a [`CompressionReport`] of what it did.
//!
//! Assumptions: the prompt is prefilled in one piece (every layer appends the `S` prompt
//! tokens at positions `0..S` before its hook), and `after_prefill_layer` is called for
//! layers `0, 1, .., L-1` in order. A call for layer 0 starts a new prompt.
//!
//! Peak memory is counted in token-rows: a layer holding `len` tokens in each of its `Hkv`
//! KV heads holds `len * Hkv` key rows (and as many value rows). It is measured when a hook
//! starts (the layer just appended holds all `S` tokens) and after its eviction.

use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use crate::allocator::{Allocator, LayerPreference, Preference, SHARE_EPSILON};
use crate::budget::{BudgetPlan, allocate_budgets};
use crate::compressor::{DecodeStep, PrefillLayer};
use crate::heads::{HeadBudgets, adakv_split, pair_budgets, regroup};
use crate::policy::{DecodeEviction, Policy};
use crate::scorer::{DecodeInput, PrefillInput, pin_sinks};
use crate::stats::{
    attention, layer_preference, lowest_index, read_host, to_host, top_k_indices, top_k_on_device,
    window_attention,
};
use crate::{CacheError, KvCompressor, LayerCache};

/// Keeps, per KV head, the `keep` best-scored of the cached tokens before the last
/// `window` ones, and all of the last `window`. Uses the cache's stored scores (a cache
/// without scores keeps its most recent tokens). Returns the tokens kept per head (the
/// longest head's count when heads were ragged).
///
/// # Errors
/// When the cache rejects the kept rows (stored scores of the wrong shape).
pub fn evict_to_budget<B: Backend>(
    cache: &mut LayerCache<B>,
    keep: usize,
    window: usize,
) -> Result<usize, CacheError> {
    let keeps = vec![keep; cache.num_kv_heads()];
    let held = evict_heads_to_budgets(cache, &keeps, window)?;
    Ok(held.into_iter().max().unwrap_or(0))
}

/// [`evict_to_budget`] with a budget per KV head: head `h` keeps its `keeps[h]`
/// best-scored tokens before its own last `window` ones, and those `window`. Returns the
/// tokens each head holds.
///
/// # Errors
/// When there is not one budget per head, or the cache rejects the kept rows.
pub fn evict_heads_to_budgets<B: Backend>(
    cache: &mut LayerCache<B>,
    keeps: &[usize],
    window: usize,
) -> Result<Vec<usize>, CacheError> {
    let scores = cache.scores().cloned();
    evict_heads_by(cache, scores.as_ref(), keeps, window)
}

/// [`evict_heads_to_budgets`] ranking by `scores` (`[Hkv, len]`, as
/// [`LayerCache::set_scores`] takes them) instead of the scores stored on the cache, which
/// may be absent: a decoding step whose scorer re-scores every step ranks by fresh scores
/// without storing them, so the cache does not carry (pad, gather) them.
///
/// # Errors
/// As [`evict_heads_to_budgets`].
fn evict_heads_by<B: Backend>(
    cache: &mut LayerCache<B>,
    scores: Option<&Tensor<B, 2>>,
    keeps: &[usize],
    window: usize,
) -> Result<Vec<usize>, CacheError> {
    let heads = cache.num_kv_heads();
    if keeps.len() != heads {
        return Err(CacheError::Retain(format!(
            "{} budgets for {heads} KV heads",
            keeps.len()
        )));
    }
    let lens = cache.head_lens();
    let width = cache.len();
    // Per head: (candidates before its window, tokens it keeps of them).
    let plan: Vec<(usize, usize)> = lens
        .iter()
        .zip(keeps)
        .map(|(&n, &keep)| {
            let candidates = n - window.min(n);
            (candidates, keep.min(candidates))
        })
        .collect();
    if plan.iter().all(|&(candidates, keep)| keep == candidates) {
        return Ok(lens);
    }
    #[cfg(feature = "flex")]
    let on_host = crate::host::is_flex::<B>();
    #[cfg(not(feature = "flex"))]
    let on_host = false;
    let select = tracing::trace_span!("select_kept", n = width, keep = keeps[0]).entered();
    let uniform = plan.windows(2).all(|p| p[0] == p[1]) && !cache.is_ragged();
    let mut kept: Vec<Vec<usize>> = match scores {
        // Other backends rank on their device and read back only the chosen indices.
        Some(scores) if !on_host && uniform => {
            let (candidates, keep) = plan[0];
            top_k_on_device(scores.clone(), candidates, keep)
        }
        Some(scores) if !on_host => plan
            .iter()
            .enumerate()
            .map(|(h, &(candidates, keep))| {
                let row = scores.clone().narrow(0, h, 1);
                let mut picked = top_k_on_device(row, candidates, keep);
                picked.pop().unwrap_or_default()
            })
            .collect(),
        Some(scores) => {
            let picked = read_host(scores, |host| {
                // [Hkv * width]
                if host.len() != heads * width {
                    return Err(CacheError::Shape(format!(
                        "{} stored scores for {heads} x {width} cached tokens",
                        host.len()
                    )));
                }
                let row = |h: usize, candidates: usize| &host[h * width..h * width + candidates];
                // A decoding step drops at most one token per head: name it, and let the
                // cache drop it without a pass over the kept ones.
                if plan
                    .iter()
                    .all(|&(candidates, keep)| keep + 1 >= candidates)
                {
                    let dropped =
                        plan.iter().enumerate().map(|(h, &(candidates, keep))| {
                            match keep < candidates {
                                true => lowest_index(row(h, candidates)).into_iter().collect(),
                                false => Vec::new(),
                            }
                        });
                    return Ok(Picked::Dropped(dropped.collect()));
                }
                let kept = plan
                    .iter()
                    .enumerate()
                    .map(|(h, &(candidates, keep))| top_k_indices(row(h, candidates), keep));
                Ok(Picked::Kept(kept.collect()))
            })?;
            match picked {
                Picked::Kept(kept) => kept,
                Picked::Dropped(dropped) => {
                    drop(select);
                    let _retain = tracing::trace_span!("evict_rows", n = width).entered();
                    cache.evict_rows(&dropped)?;
                    return Ok(cache.head_lens());
                }
            }
        }
        None => plan
            .iter()
            .map(|&(candidates, keep)| (candidates - keep..candidates).collect())
            .collect(),
    };
    for ((k, &(candidates, _)), &n) in kept.iter_mut().zip(&plan).zip(&lens) {
        k.extend(candidates..n);
    }
    drop(select);
    let _retain = tracing::trace_span!("retain", n = width, keep = keeps[0]).entered();
    cache.retain(&kept)?;
    Ok(kept.iter().map(Vec::len).collect())
}

/// The tokens a host ranking chose, per KV head: the rows kept, or (a decoding step's
/// eviction of at most one token per head) the rows dropped.
enum Picked {
    Kept(Vec<Vec<usize>>),
    Dropped(Vec<Vec<usize>>),
}

/// Decoding budgets at equal memory (section 6): the prompt tokens outside the window that
/// each unit (a layer, or a (layer, KV head) pair) may hold while decoding, given its
/// prefill budget `budgets[u]`, its normalised share `shares[u]`, the total `total` those
/// units share (`B_total`, or `B_total * Hkv` for pairs) and the least budget `floor`
/// ([`BudgetPlan::decode_floor`]).
///
/// The rule: the memory is a fixed total, as CAKE's `B_total = (C - w) * L` is. Every
/// unit keeps its prefill budget, raised to `floor` (a prompt shorter than `C` left every
/// layer everything; each may then decode without evicting until it holds `C` tokens, so
/// a cache size covering prompt and answer reproduces the full cache exactly). A unit
/// whose prefill budget was capped by the prompt (only `S - w` tokens existed) may grow
/// towards its uncapped share of `total`, but only into the room the others leave,
/// `total - sum(max(budget, floor))`, shared by preference ([`allocate_budgets`], each
/// capped at what its unit lacks). So the result sums to at most
/// `max(total, sum(max(budget, floor)))`, which is `total` for a compressor's budgets (the
/// allocation's sum to at most `total`, and a floor applies only when every layer kept
/// its whole prompt, `S - w < C - w`, where `L * (C - w)` is the total): with the window,
/// the decoding cache holds at most `C` tokens per layer on average (per KV head) between
/// steps, whatever the policy, as the uniform baselines do. Where the growth towards the
/// uncapped shares fits in the total it is given in full (the behaviour before this rule).
/// The amortised variant (`decode_slack = N`) lets each layer hold up to `N` more by
/// definition.
///
/// Zero or absent shares give no growth.
pub fn decode_budgets(budgets: &[usize], shares: &[f64], total: usize, floor: usize) -> Vec<usize> {
    let base: Vec<usize> = budgets.iter().map(|&b| b.max(floor)).collect();
    let room = total.saturating_sub(base.iter().sum());
    if room == 0 {
        return base;
    }
    let shares: Vec<f64> = (0..base.len())
        .map(|u| shares.get(u).copied().unwrap_or(0.0))
        .collect();
    let uncapped = allocate_budgets(&shares, total, &vec![total; base.len()]);
    let lacking: Vec<usize> = uncapped
        .iter()
        .zip(&base)
        .map(|(&want, &b)| want.saturating_sub(b))
        .collect();
    let growth = allocate_budgets(&shares, room, &lacking);
    base.iter().zip(growth).map(|(b, g)| b + g).collect()
}

/// Per-layer outcome of a prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerReport {
    /// Layer index.
    pub layer: usize,
    /// Final budget: prompt tokens kept outside the window (per KV head; with per-head
    /// budgets, the heads' mean rounded down, see [`LayerReport::head_budgets`]).
    pub budget: usize,
    /// Tokens held per KV head now (the longest head's count when heads differ).
    pub held: usize,
    /// Per-head budgets `[Hkv]`, present when `head_budgets` is not `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_budgets: Option<Vec<usize>>,
    /// Preference parts `H_l`, `V_l`, when measured.
    pub preference: Option<LayerPreference>,
    /// `P_l = H_l^(1/tau1) * V_l^(1/tau2)` with the policy's temperatures, when measured.
    pub preference_score: Option<f64>,
    /// The layer's share of `B_total` given by the allocator (shares sum to 1; with
    /// per-pair shares, the sum of its heads' shares).
    pub share: f64,
    /// Absolute positions of the kept tokens, per KV head `[Hkv][held_h]`, ascending
    /// (each head with its own length under per-head budgets).
    pub kept_positions: Vec<Vec<usize>>,
}

/// What a [`PolicyCompressor`] did to one prompt, serialisable for plotting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompressionReport {
    /// Policy name.
    pub policy: String,
    /// Allocator name.
    pub allocator: String,
    /// Scorer name.
    pub scorer: String,
    /// Layer-by-layer eviction during prefill.
    pub cascading: bool,
    /// Decoding-time eviction mode.
    pub decode_evict: DecodeEviction,
    /// How budgets reached the KV heads (absent for `none`).
    #[serde(default, skip_serializing_if = "HeadBudgets::is_none")]
    pub head_budgets: HeadBudgets,
    /// Prompt length S.
    pub prompt_len: usize,
    /// Decoder layers L.
    pub num_layers: usize,
    /// KV heads per layer.
    pub num_kv_heads: usize,
    /// Window w used (at most S).
    pub window: usize,
    /// Cache size C used.
    pub cache_size: usize,
    /// `B_total = (C - w) * L`.
    pub total_budget: usize,
    /// Temperatures used by the preference (`None` unless the allocator needs them).
    pub taus: Option<(f64, f64)>,
    /// Where [`CompressionReport::taus`] came from (the user, the published table, a
    /// `--tau-file` table, or the fallback); absent when not looked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tau_source: Option<crate::tau::TauSource>,
    /// Per-layer outcome.
    pub layers: Vec<LayerReport>,
    /// Budgets after each cascade stage `m` for layers `0..=m` (one-shot: one stage).
    pub stage_budgets: Vec<Vec<usize>>,
    /// Times a stage gave a layer (or a KV head) more budget than it still held (integer
    /// rounding); it kept what it had, never a dropped token.
    pub clamped_growths: usize,
    /// Peak tokens held per KV head (the longest head's), summed over layers, during
    /// prefill.
    pub peak_tokens: usize,
    /// Peak key rows (tokens summed over KV heads and layers) during prefill; value rows
    /// are as many.
    pub peak_token_rows: usize,
    /// Token rows of the full cache, `S * L * Hkv`.
    pub full_token_rows: usize,
    /// Bytes of keys and values held now, all layers (kept rows times the row size).
    pub bytes_held: usize,
    /// Bytes of keys and values held by all layers right after the prefill's eviction.
    #[serde(default)]
    pub bytes_after_prefill: usize,
    /// Peak key rows (tokens summed over KV heads and layers) held during decoding, 0
    /// before the first step. Metered when a layer's decoding hook starts (it holds the
    /// step's new token, the other layers what they kept) and after its eviction. With
    /// decoding eviction at equal memory (see [`decode_budgets`]) the layers hold at most
    /// `C * L * Hkv` rows between steps, so this is at most `(C * L + 1) * Hkv` (plus
    /// `N * L * Hkv` with `decode_slack = N`).
    #[serde(default)]
    pub decode_peak_token_rows: usize,
    /// Peak bytes of keys and values held by all layers during decoding, metered as
    /// [`CompressionReport::decode_peak_token_rows`] (0 before the first step).
    #[serde(default)]
    pub decode_peak_bytes: usize,
}

impl CompressionReport {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        // Plain data with no maps keyed by non-strings: serialisation cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Runs a [`Policy`] through the [`KvCompressor`] hooks of a model with `num_layers`
/// layers.
#[derive(Debug, Clone)]
pub struct PolicyCompressor<B: Backend> {
    /// The policy as given.
    template: Policy<B>,
    /// The policy of the current prompt (see [`Policy::for_cache_size`]).
    policy: Policy<B>,
    num_layers: usize,
    plan: Option<BudgetPlan>,
    num_kv_heads: usize,
    preferences: Vec<Option<LayerPreference>>,
    /// Per KV head preferences `[layer][Hkv]` (`head_budgets = preference`).
    head_preferences: Vec<Vec<LayerPreference>>,
    shares: Vec<f64>,
    /// Normalised per-(layer, KV head) shares (`preference` and `static` head budgets).
    pair_shares: Vec<Vec<f64>>,
    /// Per-layer decoding budgets (see [`decode_budgets`]), computed at the first step.
    decode_budgets: Vec<usize>,
    /// Per-(layer, KV head) decoding budgets, computed with [`Self::decode_budgets`].
    head_decode_budgets: Vec<Vec<usize>>,
    budgets: Vec<usize>,
    /// Per-(layer, KV head) budgets `[layer][Hkv]` (all equal to the layer's with
    /// `head_budgets = none`).
    head_budgets: Vec<Vec<usize>>,
    stage_budgets: Vec<Vec<usize>>,
    clamped_growths: usize,
    peak_tokens: usize,
    peak_token_rows: usize,
    /// Per layer: `(token rows, bytes)` held when last metered (after the prefill, then
    /// at each decoding hook).
    held: Vec<(usize, usize)>,
    /// Sums of `held` over the layers.
    held_rows: usize,
    held_bytes: usize,
    /// K/V bytes of all layers at the end of the prefill.
    prefill_bytes: usize,
    /// Peaks of `held_rows` and `held_bytes` during decoding.
    decode_peak_token_rows: usize,
    decode_peak_bytes: usize,
    /// Rows per KV head appended after the prefill without the decoding hooks and kept
    /// (see [`PolicyCompressor::keep_appended`]); they raise every decoding limit.
    appended: usize,
}

/// Runs `evict` on each layer's cache (with its index): the layers in parallel on the CPU
/// backend, where the prefill's cascade would otherwise compact them one by one with the
/// other cores idle; in order elsewhere. Each layer's result depends on that layer alone.
/// The workers' read backs are charged to the calling thread
/// ([`crate::stats::readbacks`]).
fn each_layer<B: Backend>(
    caches: &mut [LayerCache<B>],
    evict: impl Fn(usize, &mut LayerCache<B>) -> Result<(), CacheError> + Sync,
) -> Result<(), CacheError> {
    #[cfg(feature = "flex")]
    if crate::host::is_flex::<B>() {
        use rayon::prelude::*;
        let account = crate::stats::ReadbackAccount::current();
        return caches
            .par_iter_mut()
            .enumerate()
            .try_for_each(|(l, cache)| account.charge(|| evict(l, cache)));
    }
    caches
        .iter_mut()
        .enumerate()
        .try_for_each(|(l, cache)| evict(l, cache))
}

impl<B: Backend> PolicyCompressor<B> {
    /// A compressor for a model with `num_layers` decoder layers.
    pub fn new(policy: Policy<B>, num_layers: usize) -> Self {
        Self {
            template: policy.clone(),
            policy,
            num_layers,
            plan: None,
            num_kv_heads: 0,
            preferences: Vec::new(),
            head_preferences: Vec::new(),
            shares: Vec::new(),
            pair_shares: Vec::new(),
            decode_budgets: Vec::new(),
            head_decode_budgets: Vec::new(),
            budgets: Vec::new(),
            head_budgets: Vec::new(),
            stage_budgets: Vec::new(),
            clamped_growths: 0,
            peak_tokens: 0,
            peak_token_rows: 0,
            held: Vec::new(),
            held_rows: 0,
            held_bytes: 0,
            prefill_bytes: 0,
            decode_peak_token_rows: 0,
            decode_peak_bytes: 0,
            appended: 0,
        }
    }

    /// The policy of the current prompt (temperatures resolved at its cache size).
    pub fn policy(&self) -> &Policy<B> {
        &self.policy
    }

    /// The plan of the current prompt (after the first hook).
    pub fn plan(&self) -> Option<&BudgetPlan> {
        self.plan.as_ref()
    }

    /// Current per-layer budgets (prompt tokens outside the window) of the layers seen.
    pub fn budgets(&self) -> &[usize] {
        &self.budgets
    }

    /// Current per-(layer, KV head) budgets `[layer][Hkv]` of the layers seen.
    pub fn head_budgets(&self) -> &[Vec<usize>] {
        &self.head_budgets
    }

    /// Measured preference parts per layer seen (`None` where not measured).
    pub fn preferences(&self) -> &[Option<LayerPreference>] {
        &self.preferences
    }

    /// Peak `(tokens per KV head, token rows)` held during the prefill so far.
    pub fn peak(&self) -> (usize, usize) {
        (self.peak_tokens, self.peak_token_rows)
    }

    /// Peak `(token rows, K/V bytes)` held by all layers during the decoding so far (0
    /// before the first step; see [`CompressionReport::decode_peak_bytes`]).
    pub fn decode_peak(&self) -> (usize, usize) {
        (self.decode_peak_token_rows, self.decode_peak_bytes)
    }

    /// Times a cascade stage tried to grow a layer past what it still held.
    pub fn clamped_growths(&self) -> usize {
        self.clamped_growths
    }

    fn head_mode(&self) -> HeadBudgets {
        self.policy.config().head_budgets
    }

    fn reset(&mut self, plan: BudgetPlan, num_kv_heads: usize) {
        self.policy = self.template.for_cache_size(plan.cache_size);
        self.plan = Some(plan);
        self.num_kv_heads = num_kv_heads;
        self.preferences.clear();
        self.head_preferences.clear();
        self.shares.clear();
        self.pair_shares.clear();
        self.budgets.clear();
        self.head_budgets.clear();
        self.decode_budgets.clear();
        self.head_decode_budgets.clear();
        self.stage_budgets.clear();
        self.clamped_growths = 0;
        self.peak_tokens = 0;
        self.peak_token_rows = 0;
        self.held.clear();
        self.held_rows = 0;
        self.held_bytes = 0;
        self.prefill_bytes = 0;
        self.decode_peak_token_rows = 0;
        self.decode_peak_bytes = 0;
        self.appended = 0;
    }

    /// Says that `tokens` rows were appended to every KV head of every layer after the
    /// prefill, at the positions after the prompt, without running the decoding hooks (a
    /// question read against the compressed context, `cake pred --question
    /// after-compression`), and that decoding keeps them: every head's decoding limit
    /// grows by `tokens`, so the first generated token does not evict them at once. The
    /// rule of section 6 then holds each head at its new size (one token dropped per
    /// generated token), and the equal-memory bound becomes `(C + tokens) * L` per KV head
    /// for every policy alike. Calls add up; a new prompt (the next prefill) starts at 0.
    pub fn keep_appended(&mut self, tokens: usize) {
        self.appended += tokens;
    }

    /// `scores` (`[Hkv, n]`, a scorer's, column `i` of head `h` for `positions[h][i]`) as
    /// the selection ranks them: with the sink ablation the first `sink` prompt tokens
    /// first ([`pin_sinks`]; untouched without it).
    fn ranked(&self, scores: Tensor<B, 2>, positions: &[Vec<usize>]) -> Tensor<B, 2> {
        pin_sinks(scores, positions, self.policy.config().sink)
    }

    fn measure(&mut self, caches: &[LayerCache<B>]) {
        let tokens: usize = caches.iter().map(LayerCache::len).sum();
        let rows: usize = caches.iter().map(LayerCache::rows).sum();
        self.peak_tokens = self.peak_tokens.max(tokens);
        self.peak_token_rows = self.peak_token_rows.max(rows);
    }

    /// Sets the decoding meter to what `caches` hold (at the end of the prefill).
    fn meter_all(&mut self, caches: &[LayerCache<B>]) {
        self.held = caches.iter().map(|c| (c.rows(), c.bytes())).collect();
        self.held_rows = self.held.iter().map(|h| h.0).sum();
        self.held_bytes = self.held.iter().map(|h| h.1).sum();
        self.prefill_bytes = self.held_bytes;
    }

    /// Meters `layer`'s cache during decoding: the totals of all layers (the others as
    /// last metered) and their decoding peaks.
    fn meter_decode(&mut self, layer: usize, cache: &LayerCache<B>) {
        if self.held.len() <= layer {
            self.held.resize(layer + 1, (0, 0));
        }
        let now = (cache.rows(), cache.bytes());
        let was = std::mem::replace(&mut self.held[layer], now);
        self.held_rows = self.held_rows - was.0 + now.0;
        self.held_bytes = self.held_bytes - was.1 + now.1;
        self.decode_peak_token_rows = self.decode_peak_token_rows.max(self.held_rows);
        self.decode_peak_bytes = self.decode_peak_bytes.max(self.held_bytes);
    }

    /// Re-allocates budgets over the layers in `caches` (sharing the whole `B_total`) and
    /// evicts each down to its budget, clamped to what it still holds; per KV head as the
    /// policy's `head_budgets` says.
    fn allocate_and_evict(&mut self, caches: &mut [LayerCache<B>]) -> Result<(), CacheError> {
        let _span = tracing::debug_span!("evict", layers = caches.len()).entered();
        let Some(plan) = self.plan else {
            return Ok(());
        };
        let seen = caches.len().min(self.preferences.len());
        let mode = self.head_mode();
        if mode.shares_pairs() {
            return self.allocate_pairs(&mut caches[..seen], plan);
        }
        let shares = self
            .policy
            .allocator()
            .shares(self.num_layers, &self.preferences[..seen]);
        self.shares = normalised(&shares);
        let wanted = plan.allocate(&shares);
        let mut budgets = Vec::with_capacity(seen);
        let mut head_budgets = Vec::with_capacity(seen);
        for (l, (cache, &want)) in caches.iter_mut().zip(&wanted).enumerate() {
            let (budget, heads) = if mode == HeadBudgets::AdaKv {
                self.evict_adakv(cache, l, want, plan.window)?
            } else {
                let held = cache.len().saturating_sub(plan.window);
                if want > held {
                    // Rounding gave the layer a token more than it kept at an earlier
                    // stage: it keeps what it has; a dropped token is never needed back.
                    if self.budgets.get(l).is_some() {
                        self.clamped_growths += 1;
                    }
                }
                // Evicted below, every layer at once.
                let budget = want.min(held);
                (budget, vec![budget; cache.num_kv_heads()])
            };
            budgets.push(budget);
            head_budgets.push(heads);
        }
        if mode != HeadBudgets::AdaKv {
            let layers = budgets.len();
            each_layer(&mut caches[..layers], |l, cache| {
                evict_to_budget(cache, budgets[l], plan.window).map(drop)
            })?;
        }
        self.stage_budgets.push(budgets.clone());
        self.budgets = budgets;
        self.head_budgets = head_budgets;
        Ok(())
    }

    /// AdaKV inside layer `l`: its `want * Hkv` token rows go to the heads' best pooled
    /// scores, each head first keeping `floor(head_floor * want)`. Returns the layer
    /// budget (clamped to what the layer still holds) and the heads' budgets.
    fn evict_adakv(
        &mut self,
        cache: &mut LayerCache<B>,
        l: usize,
        want: usize,
        window: usize,
    ) -> Result<(usize, Vec<usize>), CacheError> {
        let lens = cache.head_lens();
        let heads = lens.len();
        let candidates: Vec<usize> = lens.iter().map(|&n| n - window.min(n)).collect();
        let available: usize = candidates.iter().sum();
        if want * heads > available && self.budgets.get(l).is_some() {
            self.clamped_growths += 1;
        }
        let budget = want.min(available / heads.max(1));
        let width = cache.len();
        let scores = match cache.scores() {
            Some(scores) => to_host(scores.clone()),
            // Unscored: recency (later rows first).
            None => (0..heads * width)
                .map(|i| (i % width.max(1)) as f32)
                .collect(),
        };
        let rows: Vec<&[f32]> = (0..heads)
            .map(|h| &scores[h * width..h * width + candidates[h]])
            .collect();
        let mut kept = adakv_split(&rows, want, self.policy.config().head_floor);
        for ((k, &c), &n) in kept.iter_mut().zip(&candidates).zip(&lens) {
            k.extend(c..n);
        }
        let head_budgets: Vec<usize> = kept
            .iter()
            .zip(&lens)
            .map(|(k, &n)| k.len() - window.min(n))
            .collect();
        cache.retain(&kept)?;
        Ok((budget, head_budgets))
    }

    /// `preference` and `static` head budgets: the shares of every (layer, KV head) pair
    /// seen share `B_total * Hkv` token rows, each pair capped at `S - w` and clamped to
    /// what its head still holds.
    fn allocate_pairs(
        &mut self,
        caches: &mut [LayerCache<B>],
        plan: BudgetPlan,
    ) -> Result<(), CacheError> {
        let heads = self.num_kv_heads;
        let raw: Vec<Vec<f64>> = match self.head_mode() {
            HeadBudgets::Static => {
                let table = self.policy.head_shares().unwrap_or(&[]);
                (0..caches.len())
                    .map(|l| match table.get(l) {
                        Some(row) if row.len() == heads => row.clone(),
                        _ => vec![SHARE_EPSILON; heads],
                    })
                    .collect()
            }
            _ => {
                let (tau1, tau2) = self.policy.config().taus();
                // A layer measured without attention has no head preferences: share 0.
                let flat: Vec<Option<LayerPreference>> = (0..caches.len())
                    .flat_map(|l| match self.head_preferences.get(l) {
                        Some(row) if row.len() == heads => row.iter().map(|p| Some(*p)).collect(),
                        _ => vec![None; heads],
                    })
                    .collect();
                let shares = Preference { tau1, tau2 }.shares(self.num_layers, &flat);
                shares.chunks(heads.max(1)).map(<[f64]>::to_vec).collect()
            }
        };
        let flat: Vec<f64> = raw.iter().flatten().copied().collect();
        self.pair_shares = regroup(&normalised(&flat), &raw);
        self.shares = self.pair_shares.iter().map(|r| r.iter().sum()).collect();
        let wanted = pair_budgets(&raw, plan.total() * heads, plan.cap());
        let mut budgets = Vec::with_capacity(caches.len());
        let mut head_budgets = Vec::with_capacity(caches.len());
        for (l, (cache, want)) in caches.iter_mut().zip(wanted).enumerate() {
            let held: Vec<usize> = cache
                .head_lens()
                .iter()
                .map(|n| n.saturating_sub(plan.window))
                .collect();
            if want.iter().zip(&held).any(|(w, h)| w > h) && self.budgets.get(l).is_some() {
                self.clamped_growths += 1;
            }
            let keeps: Vec<usize> = want.iter().zip(&held).map(|(w, h)| *w.min(h)).collect();
            evict_heads_to_budgets(cache, &keeps, plan.window)?;
            budgets.push(keeps.iter().sum::<usize>() / keeps.len().max(1));
            head_budgets.push(keeps);
        }
        self.stage_budgets.push(budgets.clone());
        self.budgets = budgets;
        self.head_budgets = head_budgets;
        Ok(())
    }

    /// Decoding budgets per (layer, KV head), from the prefill's, at equal memory (see
    /// [`decode_budgets`]): none evicts before it holds `C` tokens when the prompt was
    /// shorter than that ([`BudgetPlan::decode_floor`]), and a head grows past that only
    /// where its layer (or, with per-pair shares, the pair itself) was capped by the
    /// prompt and the total `B_total` (times `Hkv` in token rows) leaves room.
    fn set_decode_budgets(&mut self, plan: BudgetPlan) {
        let floor = plan.decode_floor();
        let heads = self.num_kv_heads.max(1);
        if self.head_mode().shares_pairs() {
            let flat_budgets: Vec<usize> = self.head_budgets.iter().flatten().copied().collect();
            let flat_shares: Vec<f64> = self.pair_shares.iter().flatten().copied().collect();
            let flat = decode_budgets(&flat_budgets, &flat_shares, plan.total() * heads, floor);
            self.head_decode_budgets = regroup(&flat, &self.head_budgets);
            self.decode_budgets = self
                .head_decode_budgets
                .iter()
                .map(|row| row.iter().sum::<usize>() / row.len().max(1))
                .collect();
        } else {
            // Every head of a layer grows with its layer. The layer's budget is counted as
            // its heads' mean rounded up (AdaKV's heads differ), so that the growth its
            // heads get never takes token rows the total lacks.
            let floored: Vec<Vec<usize>> = self
                .head_budgets
                .iter()
                .map(|row| row.iter().map(|&b| b.max(floor)).collect())
                .collect();
            let layer: Vec<usize> = floored
                .iter()
                .map(|row| row.iter().sum::<usize>().div_ceil(row.len().max(1)))
                .collect();
            self.decode_budgets = decode_budgets(&layer, &self.shares, plan.total(), 0);
            self.head_decode_budgets = floored
                .into_iter()
                .zip(self.decode_budgets.iter().zip(&layer))
                .map(|(row, (&decode, &base))| row.iter().map(|b| b + decode - base).collect())
                .collect();
        }
    }

    /// The decoding limits of `layer`'s KV heads: `(tokens kept, tokens held before
    /// evicting)` each, i.e. `budget + w` (plus the rows kept by
    /// [`PolicyCompressor::keep_appended`]) and that plus the policy's slack; `None` before
    /// a prefill or when the policy never evicts while decoding.
    fn decode_limits(&self, layer: usize) -> Option<Vec<(usize, usize)>> {
        let config = self.policy.config();
        if config.decode_evict == DecodeEviction::None {
            return None;
        }
        let plan = self.plan?;
        let budgets = match self.head_decode_budgets.get(layer) {
            Some(b) => b,
            None => self.head_budgets.get(layer)?,
        };
        Some(
            budgets
                .iter()
                .map(|b| {
                    let keep = b + plan.window + self.appended;
                    (keep, keep + config.decode_slack)
                })
                .collect(),
        )
    }

    /// The report of the current prompt, with the kept positions read from `caches`.
    pub fn report(&self, caches: &[LayerCache<B>]) -> CompressionReport {
        let plan = self.plan.unwrap_or(BudgetPlan {
            prompt_len: 0,
            window: 0,
            cache_size: 0,
            num_layers: self.num_layers,
        });
        let config = self.policy.config();
        let taus = (self.policy.allocator().needs_preference()
            || config.head_budgets == HeadBudgets::Preference)
            .then(|| config.taus());
        let (t1, t2) = config.taus();
        let per_head = !config.head_budgets.is_none();
        let layers = caches
            .iter()
            .enumerate()
            .map(|(l, cache)| {
                let preference = self.preferences.get(l).copied().flatten();
                LayerReport {
                    layer: l,
                    budget: self
                        .budgets
                        .get(l)
                        .copied()
                        .unwrap_or_else(|| cache.len().saturating_sub(plan.window)),
                    held: cache.len(),
                    head_budgets: per_head
                        .then(|| self.head_budgets.get(l).cloned())
                        .flatten(),
                    preference,
                    preference_score: preference.map(|p| p.score(t1, t2)),
                    share: self.shares.get(l).copied().unwrap_or(0.0),
                    kept_positions: cache.positions().to_vec(),
                }
            })
            .collect();
        CompressionReport {
            policy: self.policy.name().to_string(),
            allocator: self.policy.allocator().name().to_string(),
            scorer: self.policy.scorer().name().to_string(),
            cascading: config.cascading,
            decode_evict: config.decode_evict,
            head_budgets: config.head_budgets,
            prompt_len: plan.prompt_len,
            num_layers: self.num_layers,
            num_kv_heads: self.num_kv_heads,
            window: plan.window,
            cache_size: plan.cache_size,
            total_budget: plan.total(),
            tau_source: taus.and(self.policy.tau_source().cloned()),
            taus,
            layers,
            stage_budgets: self.stage_budgets.clone(),
            clamped_growths: self.clamped_growths,
            peak_tokens: self.peak_tokens,
            peak_token_rows: self.peak_token_rows,
            full_token_rows: plan.prompt_len * self.num_layers * self.num_kv_heads,
            bytes_held: caches.iter().map(LayerCache::bytes).sum(),
            bytes_after_prefill: self.prefill_bytes,
            decode_peak_token_rows: self.decode_peak_token_rows,
            decode_peak_bytes: self.decode_peak_bytes,
        }
    }

    /// Scores `[Hkv, len]` of a decoding step over a cache whose KV heads hold different
    /// counts: each KV head is scored alone, from its own query group's attention (so
    /// TOVA averages over the group, not the layer) and its own positions; rows are
    /// padded to the longest head.
    fn ragged_decode_scores(
        &self,
        step: DecodeStep<B>,
        cache: &LayerCache<B>,
        window: usize,
    ) -> Option<Tensor<B, 2>> {
        let scorer = self.policy.scorer();
        let heads = cache.num_kv_heads();
        let [h, _, d] = step.query.dims();
        let group = h / heads.max(1);
        let width = cache.len();
        let device = step.query.device();
        let rows = (0..heads)
            .map(|kv| {
                let n = cache.positions()[kv].len();
                let attn = match &step.attention {
                    Some(a) => Some(a.clone().narrow(0, kv * group, group).narrow(2, 0, n)),
                    None if scorer.needs_window_attention() && n > 0 => {
                        let q = step.query.clone().narrow(0, kv * group, group);
                        let keys = cache.head_keys(kv)?.reshape([1, n, d]);
                        Some(attention(q, keys, None))
                    }
                    None => None,
                };
                let stored = cache
                    .scores()
                    .map(|s| s.clone().narrow(0, kv, 1).narrow(1, 0, n));
                let row = scorer.decode_scores(DecodeInput {
                    attention: attn.as_ref(),
                    stored,
                    positions: &cache.positions()[kv..=kv],
                    window,
                    device: &device,
                }); // [1, n]
                Some(if n < width {
                    Tensor::cat(vec![row, Tensor::zeros([1, width - n], &device)], 1)
                } else {
                    row
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Tensor::cat(rows, 0))
    }
}

/// Shares divided by their sum (equal shares when the sum is 0).
fn normalised(shares: &[f64]) -> Vec<f64> {
    let sum: f64 = shares.iter().sum();
    shares
        .iter()
        .map(|s| {
            if sum > 0.0 {
                s / sum
            } else {
                1.0 / shares.len() as f64
            }
        })
        .collect()
}

impl<B: Backend> KvCompressor<B> for PolicyCompressor<B> {
    fn after_prefill_layer(
        &mut self,
        step: PrefillLayer<B>,
        caches: &mut [LayerCache<B>],
    ) -> Result<(), CacheError> {
        let PrefillLayer {
            layer,
            queries,
            attention_sums,
        } = step;
        let Some(cache) = caches.get(layer) else {
            return Ok(());
        };
        if layer == 0 || self.plan.is_none() {
            let plan = self
                .policy
                .config()
                .plan(cache.len(), self.num_layers)
                .map_err(|e| CacheError::Policy(e.to_string()))?;
            self.reset(plan, cache.num_kv_heads());
            if self.head_mode() == HeadBudgets::Static {
                let Some(table) = self.policy.head_shares() else {
                    return Err(CacheError::Policy(
                        "head_budgets = static needs per-head shares: build the policy with Policy::with_head_shares (PolicySpec does, from a `cake fit --per-head` --score-fn)".into(),
                    ));
                };
                if let Some(row) = table.iter().find(|row| row.len() != self.num_kv_heads) {
                    return Err(CacheError::Policy(format!(
                        "the score function has per-head shares for {} KV heads, the model has {}",
                        row.len(),
                        self.num_kv_heads
                    )));
                }
            }
        }
        self.measure(&caches[..=layer]);
        let Some(plan) = self.plan else {
            return Ok(());
        };
        let cache = &caches[layer];
        let Some(keys) = cache.keys() else {
            self.preferences.resize(layer + 1, None);
            self.head_preferences.resize(layer + 1, Vec::new());
            return Ok(());
        };
        let scorer = self.policy.scorer();
        let head_prefs = self.head_mode() == HeadBudgets::Preference;
        let needs_pref = self.policy.allocator().needs_preference() || head_prefs;
        let attn = (needs_pref || scorer.needs_window_attention()).then(|| {
            let _span = tracing::trace_span!("window_attention", layer).entered();
            window_attention(queries.clone(), keys.clone(), plan.window) // [H, w, S]
        });
        let (preference, heads) = match &attn {
            Some(attn) if head_prefs => {
                let _span = tracing::trace_span!("layer_preference", layer).entered();
                // Per KV head: its query group's window attention [G, w, S].
                let [h, _, _] = attn.dims();
                let kv = self.num_kv_heads.max(1);
                let group = h / kv;
                let heads: Vec<LayerPreference> = (0..kv)
                    .map(|g| layer_preference(&attn.clone().narrow(0, g * group, group)))
                    .collect();
                // Entropy and variance are sums over heads: the layer's is their sum.
                let layer_pref = LayerPreference {
                    entropy: heads.iter().map(|p| p.entropy).sum(),
                    variance: heads.iter().map(|p| p.variance).sum(),
                };
                (Some(layer_pref), heads)
            }
            Some(attn) if needs_pref => {
                let _span = tracing::trace_span!("layer_preference", layer).entered();
                (Some(layer_preference(attn)), Vec::new())
            }
            _ => (None, Vec::new()),
        };
        self.preferences.resize(layer, None);
        self.preferences.push(preference);
        self.head_preferences.resize(layer, Vec::new());
        self.head_preferences.push(heads);
        let scores = {
            let _span = tracing::trace_span!("prefill_scores", layer).entered();
            let scores = scorer.prefill_scores(&PrefillInput {
                queries: &queries,
                keys: &keys,
                window_attention: attn.as_ref(),
                window: plan.window,
                attention_sums: attention_sums.as_ref(),
            }); // [Hkv, S]
            self.ranked(scores, caches[layer].positions())
        };
        drop((attn, keys));
        caches[layer].set_scores(scores)?;
        if self.policy.config().cascading {
            let _span = tracing::trace_span!("cascade_evict", layer).entered();
            self.allocate_and_evict(&mut caches[..=layer])?;
            self.measure(&caches[..=layer]);
        }
        Ok(())
    }

    fn after_prefill(&mut self, caches: &mut [LayerCache<B>]) -> Result<(), CacheError> {
        self.measure(caches);
        if !self.policy.config().cascading {
            self.allocate_and_evict(caches)?;
            self.measure(caches);
        }
        if let Some(plan) = self.plan {
            self.set_decode_budgets(plan);
        }
        self.meter_all(caches);
        Ok(())
    }

    fn wants_decode_attention(&self, layer: usize, cache: &LayerCache<B>) -> bool {
        let scorer = self.policy.scorer();
        scorer.needs_window_attention()
            && self.decode_limits(layer).is_some_and(|limits| {
                scorer.accumulates()
                    || cache
                        .head_lens()
                        .iter()
                        .zip(&limits)
                        .any(|(n, (_, evict_above))| n + 1 > *evict_above)
            })
    }

    /// Section 6: once a KV head holds more than its `budget + w` tokens (plus the
    /// policy's `decode_slack`), re-score the layer's tokens from the new query's
    /// attention (the model's own probabilities when it passed them, else recomputed) and
    /// keep that head's best `budget` outside the window. With slack 0 (the paper's rule)
    /// that drops one token per step; with slack N it drops N + 1 at once every N + 1
    /// steps. Heads with per-head budgets each follow their own limit.
    ///
    /// The K/V held by all layers is metered when the hook starts (the layer holds the
    /// step's new token) and after its eviction, for
    /// [`CompressionReport::decode_peak_bytes`].
    fn after_decode_step(
        &mut self,
        step: DecodeStep<B>,
        cache: &mut LayerCache<B>,
    ) -> Result<(), CacheError> {
        let layer = step.layer;
        self.meter_decode(layer, cache);
        let evicted = self.decode_evict(step, cache);
        self.meter_decode(layer, cache);
        evicted
    }
}

impl<B: Backend> PolicyCompressor<B> {
    /// The eviction of [`KvCompressor::after_decode_step`] (section 6), unmetered.
    fn decode_evict(
        &mut self,
        step: DecodeStep<B>,
        cache: &mut LayerCache<B>,
    ) -> Result<(), CacheError> {
        let layer = step.layer;
        if self.head_decode_budgets.len() != self.head_budgets.len()
            && let Some(plan) = self.plan
        {
            self.set_decode_budgets(plan);
        }
        let scorer = self.policy.scorer();
        let limits = self.decode_limits(layer);
        // The prefill's scores serve only a scorer that adds to them and evicts: for the
        // others every append would pad them (a new [Hkv, n] tensor a step) for nothing, and
        // their presence would make the first eviction a pass over all the kept rows.
        if limits.is_none() || !scorer.accumulates() {
            cache.clear_scores();
        }
        let (Some(plan), Some(limits)) = (self.plan, limits) else {
            return Ok(());
        };
        let lens = cache.head_lens();
        let over: Vec<bool> = lens
            .iter()
            .zip(&limits)
            .map(|(n, (_, evict_above))| n > evict_above)
            .collect();
        let any_over = over.iter().any(|&o| o);
        if !any_over && !scorer.accumulates() {
            return Ok(());
        }
        if cache.is_empty() {
            return Ok(());
        }
        let scores = if cache.is_ragged() {
            match self.ragged_decode_scores(step, cache, plan.window) {
                Some(scores) => self.ranked(scores, cache.positions()),
                None => return Ok(()),
            }
        } else {
            let device = step.query.device();
            // [H, 1, n]. No view of the cache's buffers may outlive this: eviction
            // compacts them in place only while the cache holds them alone (else it
            // copies them whole).
            let attn = match step.attention {
                Some(attn) => Some(attn),
                None if scorer.needs_window_attention() => {
                    cache.keys().map(|keys| attention(step.query, keys, None))
                }
                None => None,
            };
            let scores = scorer.decode_scores(DecodeInput {
                attention: attn.as_ref(),
                stored: cache.scores().cloned(),
                positions: cache.positions(),
                window: plan.window,
                device: &device,
            }); // [Hkv, n]
            self.ranked(scores, cache.positions())
        };
        // A scorer that re-scores every step ranks by the fresh scores alone: storing them
        // would only make the next append pad them and this eviction gather them.
        let scores = if scorer.accumulates() {
            cache.set_scores(scores)?;
            cache.scores().cloned()
        } else {
            cache.clear_scores();
            Some(scores)
        };
        if any_over {
            let _span = tracing::trace_span!("decode_evict", layer, held = cache.len()).entered();
            let keeps: Vec<usize> = limits
                .iter()
                .zip(&over)
                .zip(&lens)
                .map(|(((keep, _), &over), &n)| if over { keep - plan.window } else { n })
                .collect();
            evict_heads_by(cache, scores.as_ref(), &keeps, plan.window)?;
        }
        Ok(())
    }
}
