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

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::allocator::LayerPreference;
use crate::budget::{BudgetPlan, allocate_budgets};
use crate::compressor::{DecodeStep, PrefillLayer};
use crate::policy::{DecodeEviction, Policy};
use crate::scorer::{DecodeInput, PrefillInput};
use crate::stats::{
    attention, layer_preference, to_host, top_k_indices, top_k_on_device, window_attention,
};
use crate::{CacheError, KvCompressor, LayerCache};

/// Keeps, per KV head, the `keep` best-scored of the cached tokens before the last
/// `window` ones, and all of the last `window`. Uses the cache's stored scores (a cache
/// without scores keeps its most recent tokens). Returns the tokens kept per head.
///
/// # Errors
/// When the cache rejects the kept rows (stored scores of the wrong shape).
pub fn evict_to_budget<B: Backend>(
    cache: &mut LayerCache<B>,
    keep: usize,
    window: usize,
) -> Result<usize, CacheError> {
    let n = cache.len();
    let w = window.min(n);
    let candidates = n - w;
    if keep >= candidates {
        return Ok(n);
    }
    let heads = cache.num_kv_heads();
    #[cfg(feature = "flex")]
    let on_host = crate::host::is_flex::<B>();
    #[cfg(not(feature = "flex"))]
    let on_host = false;
    let select = tracing::trace_span!("select_kept", n, keep).entered();
    let kept: Vec<Vec<usize>> = match cache.scores() {
        // Other backends rank on their device and read back only the chosen indices.
        Some(scores) if !on_host => top_k_on_device(scores.clone(), candidates, keep)
            .into_iter()
            .map(|mut k| {
                k.extend(candidates..n);
                k
            })
            .collect(),
        Some(scores) => {
            let host = to_host(scores.clone()); // [Hkv * n]
            if host.len() != heads * n {
                return Err(CacheError::Shape(format!(
                    "{} stored scores for {heads} x {n} cached tokens",
                    host.len()
                )));
            }
            (0..heads)
                .map(|h| {
                    let row = &host[h * n..h * n + candidates];
                    let mut k = top_k_indices(row, keep);
                    k.extend(candidates..n);
                    k
                })
                .collect()
        }
        None => vec![(candidates - keep..n).collect(); heads],
    };
    drop(select);
    let _retain = tracing::trace_span!("retain", n, keep).entered();
    cache.retain(&kept)?;
    Ok(keep + w)
}

/// Decoding budgets: a layer keeps `budget_l + w` tokens while decoding (section 6), except
/// that a layer whose prefill budget was capped by the prompt (`S - w` tokens exist) may grow
/// up to its uncapped share of `B_total`. So a cache size covering prompt and answer never
/// evicts anything (the full cache is reproduced exactly), and a layer never holds more than
/// the allocator gave it.
pub fn decode_budgets(budgets: &[usize], shares: &[f64], total: usize) -> Vec<usize> {
    let uncapped = allocate_budgets(shares, total, &vec![total; shares.len()]);
    budgets
        .iter()
        .enumerate()
        .map(|(l, &b)| b.max(uncapped.get(l).copied().unwrap_or(0)))
        .collect()
}

/// Per-layer outcome of a prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerReport {
    /// Layer index.
    pub layer: usize,
    /// Final budget: prompt tokens kept outside the window.
    pub budget: usize,
    /// Tokens held per KV head now.
    pub held: usize,
    /// Preference parts `H_l`, `V_l`, when measured.
    pub preference: Option<LayerPreference>,
    /// `P_l = H_l^(1/tau1) * V_l^(1/tau2)` with the policy's temperatures, when measured.
    pub preference_score: Option<f64>,
    /// The layer's share of `B_total` given by the allocator (shares sum to 1).
    pub share: f64,
    /// Absolute positions of the kept tokens, per KV head `[Hkv][held]`, ascending.
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
    /// Times a stage gave a layer more budget than it still held (integer rounding); the
    /// layer kept what it had, never a dropped token.
    pub clamped_growths: usize,
    /// Peak tokens held per KV head, summed over layers, during prefill.
    pub peak_tokens: usize,
    /// Peak key rows (`tokens * Hkv`, summed over layers) during prefill; value rows are
    /// as many.
    pub peak_token_rows: usize,
    /// Token rows of the full cache, `S * L * Hkv`.
    pub full_token_rows: usize,
    /// Bytes of keys and values held now, all layers.
    pub bytes_held: usize,
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
    shares: Vec<f64>,
    /// Per-layer decoding budgets (see [`decode_budgets`]), computed at the first step.
    decode_budgets: Vec<usize>,
    budgets: Vec<usize>,
    stage_budgets: Vec<Vec<usize>>,
    clamped_growths: usize,
    peak_tokens: usize,
    peak_token_rows: usize,
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
            shares: Vec::new(),
            decode_budgets: Vec::new(),
            budgets: Vec::new(),
            stage_budgets: Vec::new(),
            clamped_growths: 0,
            peak_tokens: 0,
            peak_token_rows: 0,
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

    /// Measured preference parts per layer seen (`None` where not measured).
    pub fn preferences(&self) -> &[Option<LayerPreference>] {
        &self.preferences
    }

    /// Peak `(tokens per KV head, token rows)` held during the prefill so far.
    pub fn peak(&self) -> (usize, usize) {
        (self.peak_tokens, self.peak_token_rows)
    }

    /// Times a cascade stage tried to grow a layer past what it still held.
    pub fn clamped_growths(&self) -> usize {
        self.clamped_growths
    }

    fn reset(&mut self, plan: BudgetPlan, num_kv_heads: usize) {
        self.policy = self.template.for_cache_size(plan.cache_size);
        self.plan = Some(plan);
        self.num_kv_heads = num_kv_heads;
        self.preferences.clear();
        self.shares.clear();
        self.budgets.clear();
        self.decode_budgets.clear();
        self.stage_budgets.clear();
        self.clamped_growths = 0;
        self.peak_tokens = 0;
        self.peak_token_rows = 0;
    }

    fn measure(&mut self, caches: &[LayerCache<B>]) {
        let tokens: usize = caches.iter().map(LayerCache::len).sum();
        let rows: usize = caches.iter().map(|c| c.len() * c.num_kv_heads()).sum();
        self.peak_tokens = self.peak_tokens.max(tokens);
        self.peak_token_rows = self.peak_token_rows.max(rows);
    }

    /// Re-allocates budgets over the layers in `caches` (sharing the whole `B_total`) and
    /// evicts each down to its budget, clamped to what it still holds.
    fn allocate_and_evict(&mut self, caches: &mut [LayerCache<B>]) -> Result<(), CacheError> {
        let _span = tracing::debug_span!("evict", layers = caches.len()).entered();
        let Some(plan) = self.plan else {
            return Ok(());
        };
        let seen = caches.len().min(self.preferences.len());
        let shares = self
            .policy
            .allocator()
            .shares(self.num_layers, &self.preferences[..seen]);
        let sum: f64 = shares.iter().sum();
        self.shares = shares
            .iter()
            .map(|s| {
                if sum > 0.0 {
                    s / sum
                } else {
                    1.0 / seen as f64
                }
            })
            .collect();
        let wanted = plan.allocate(&shares);
        let mut budgets = Vec::with_capacity(seen);
        for (l, (cache, &want)) in caches.iter_mut().zip(&wanted).enumerate() {
            let held = cache.len().saturating_sub(plan.window);
            if want > held {
                // Rounding gave the layer a token more than it kept at an earlier stage:
                // it keeps what it has; a dropped token is never needed back.
                if self.budgets.get(l).is_some() {
                    self.clamped_growths += 1;
                }
            }
            let budget = want.min(held);
            evict_to_budget(cache, budget, plan.window)?;
            budgets.push(budget);
        }
        self.stage_budgets.push(budgets.clone());
        self.budgets = budgets;
        Ok(())
    }

    /// The decoding limit of `layer`: `(tokens kept, tokens held before evicting)`, i.e.
    /// `budget + w` and that plus the policy's slack; `None` before a prefill or when the
    /// policy never evicts while decoding.
    fn decode_limit(&self, layer: usize) -> Option<(usize, usize)> {
        let config = self.policy.config();
        if config.decode_evict == DecodeEviction::None {
            return None;
        }
        let plan = self.plan?;
        let budget = match self.decode_budgets.get(layer) {
            Some(&b) => b,
            None => *self.budgets.get(layer)?,
        };
        let keep = budget + plan.window;
        Some((keep, keep + config.decode_slack))
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
        let taus = self
            .policy
            .allocator()
            .needs_preference()
            .then(|| config.taus());
        let (t1, t2) = config.taus();
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
        }
    }
}

impl<B: Backend> KvCompressor<B> for PolicyCompressor<B> {
    fn after_prefill_layer(
        &mut self,
        step: PrefillLayer<B>,
        caches: &mut [LayerCache<B>],
    ) -> Result<(), CacheError> {
        let PrefillLayer { layer, queries } = step;
        let Some(cache) = caches.get(layer) else {
            return Ok(());
        };
        if layer == 0 || self.plan.is_none() {
            let plan = self.policy.config().plan(cache.len(), self.num_layers);
            self.reset(plan, cache.num_kv_heads());
        }
        self.measure(&caches[..=layer]);
        let Some(plan) = self.plan else {
            return Ok(());
        };
        let cache = &caches[layer];
        let Some(keys) = cache.keys() else {
            self.preferences.resize(layer + 1, None);
            return Ok(());
        };
        let scorer = self.policy.scorer();
        let needs_pref = self.policy.allocator().needs_preference();
        let attn = (needs_pref || scorer.needs_window_attention()).then(|| {
            let _span = tracing::trace_span!("window_attention", layer).entered();
            window_attention(queries.clone(), keys.clone(), plan.window) // [H, w, S]
        });
        let preference = attn.as_ref().map(|attn| {
            let _span = tracing::trace_span!("layer_preference", layer).entered();
            layer_preference(attn)
        });
        self.preferences.resize(layer, None);
        self.preferences.push(preference);
        let scores = {
            let _span = tracing::trace_span!("prefill_scores", layer).entered();
            scorer.prefill_scores(&PrefillInput {
                queries: &queries,
                keys: &keys,
                window_attention: attn.as_ref(),
                window: plan.window,
            }) // [Hkv, S]
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
            self.decode_budgets = decode_budgets(&self.budgets, &self.shares, plan.total());
        }
        Ok(())
    }

    fn wants_decode_attention(&self, layer: usize, cache: &LayerCache<B>) -> bool {
        let scorer = self.policy.scorer();
        scorer.needs_window_attention()
            && self.decode_limit(layer).is_some_and(|(_, evict_above)| {
                cache.len() + 1 > evict_above || scorer.accumulates()
            })
    }

    /// Section 6: once a layer holds more than `budget + w` tokens (plus the policy's
    /// `decode_slack`), re-score its tokens from the new query's attention (the model's
    /// own probabilities when it passed them, else recomputed) and keep the best `budget`
    /// outside the window. With slack 0 (the paper's rule) that drops one token per step;
    /// with slack N it drops N + 1 at once every N + 1 steps.
    fn after_decode_step(
        &mut self,
        step: DecodeStep<B>,
        cache: &mut LayerCache<B>,
    ) -> Result<(), CacheError> {
        let layer = step.layer;
        if self.decode_budgets.len() != self.budgets.len()
            && let Some(plan) = self.plan
        {
            self.decode_budgets = decode_budgets(&self.budgets, &self.shares, plan.total());
        }
        let (Some(plan), Some((keep, evict_above))) = (self.plan, self.decode_limit(layer)) else {
            return Ok(());
        };
        let scorer = self.policy.scorer();
        let over = cache.len() > evict_above;
        if !over && !scorer.accumulates() {
            return Ok(());
        }
        if cache.is_empty() {
            return Ok(());
        }
        let device = step.query.device();
        // [H, 1, n]. No view of the cache's buffers may outlive this: eviction compacts
        // them in place only while the cache holds them alone (else it copies them whole).
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
        cache.set_scores(scores)?;
        if over {
            let _span = tracing::trace_span!("decode_evict", layer, held = cache.len()).entered();
            evict_to_budget(cache, keep - plan.window, plan.window)?;
        }
        Ok(())
    }
}
