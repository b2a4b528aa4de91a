//! Padded batches of token sequences, with the position ids and attention mask that make a batched
//! forward pass give each sequence the logits it would get alone.

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use crate::error::{ModelError, Result};

/// Which side of a shorter sequence the padding goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// Pad after the tokens: token `i` of a row sits at column `i` (the editing code's convention).
    #[default]
    Right,
    /// Pad before the tokens: every row ends in the last column (handy for generation).
    Left,
}

/// Added to attention scores that must be ignored. Finite, so that a row with nothing to attend
/// to (a padding query) gives a uniform distribution instead of NaN.
const MASKED: f32 = -1e30;

/// A prompt and the continuations ("branches") that share it, for [`PromptBatch::trees`].
#[derive(Debug, Clone)]
pub struct PromptTree<'a> {
    pub prompt: &'a [u32],
    pub branches: Vec<&'a [u32]>,
}

impl PromptTree<'_> {
    /// Columns the tree fills: the prompt and every branch, one after the other.
    pub fn columns(&self) -> usize {
        self.prompt.len() + self.branches.iter().map(|b| b.len()).sum::<usize>()
    }

    /// Column of the first token of branch `i`.
    pub fn branch_start(&self, i: usize) -> usize {
        self.prompt.len() + self.branches[..i].iter().map(|b| b.len()).sum::<usize>()
    }

    /// The sequences the tree stands for: the prompt followed by each branch.
    pub fn paths(&self) -> impl Iterator<Item = Vec<u32>> + '_ {
        self.branches.iter().map(|branch| [self.prompt, branch].concat())
    }
}

/// A rectangular batch of token ids plus what the models need to ignore the padding.
#[derive(Debug, Clone)]
pub struct PromptBatch<B: Backend> {
    /// `[b, t]` token ids, padded.
    pub ids: Tensor<B, 2, Int>,
    /// `[b, t]` position of each token inside its own sequence (0 for padding).
    pub positions: Tensor<B, 2, Int>,
    /// `[b, 1, t, past + t]` additive mask: causal and excluding padding keys.
    pub mask: Tensor<B, 4>,
    /// Unpadded length of each row, counting the cached columns.
    pub lengths: Vec<usize>,
    /// Column of each row's first token (its amount of left padding).
    pub offsets: Vec<usize>,
    /// Columns before this batch's, held in a [`crate::KvCache`] (0 for a fresh batch).
    pub past: usize,
}

impl<B: Backend> PromptBatch<B> {
    pub fn new(
        sequences: &[Vec<u32>],
        padding: Padding,
        pad_id: u32,
        device: &B::Device,
    ) -> Result<Self> {
        if sequences.is_empty() || sequences.iter().any(|s| s.is_empty()) {
            return Err(ModelError::Input(
                "a batch needs at least one sequence and no empty sequence".into(),
            ));
        }
        let b = sequences.len();
        let t = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
        let offsets: Vec<usize> = match padding {
            Padding::Right => vec![0; b],
            Padding::Left => lengths.iter().map(|&n| t - n).collect(),
        };
        let mut ids = vec![pad_id as i64; b * t];
        let mut positions = vec![0i64; b * t];
        let mut key_mask = vec![MASKED; b * t];
        for (row, seq) in sequences.iter().enumerate() {
            for (i, &id) in seq.iter().enumerate() {
                let col = row * t + offsets[row] + i;
                ids[col] = id as i64;
                positions[col] = i as i64;
                key_mask[col] = 0.0;
            }
        }
        let causal: Vec<f32> =
            (0..t * t).map(|ij| if ij % t <= ij / t { 0.0 } else { MASKED }).collect();
        let causal = Tensor::<B, 2>::from_data(TensorData::new(causal, [t, t]), device);
        let keys = Tensor::<B, 2>::from_data(TensorData::new(key_mask, [b, t]), device);
        let mask = causal.reshape([1, 1, t, t]).expand([b, 1, t, t])
            + keys.reshape([b, 1, 1, t]).expand([b, 1, t, t]);
        Ok(Self {
            ids: Tensor::from_data(TensorData::new(ids, [b, t]), device),
            positions: Tensor::from_data(TensorData::new(positions, [b, t]), device),
            mask,
            lengths,
            offsets,
            past: 0,
        })
    }

    /// One row per [`PromptTree`]: its prompt, then each branch's tokens, which sit at the positions
    /// right after the prompt and attend to the prompt and to their own earlier tokens only. A
    /// forward pass gives every token the logits it would get in `prompt ++ branch` alone, so the
    /// prompt is computed once for all its branches. Rows are right-padded.
    ///
    /// With `past` > 0 every row continues the same `past` tokens held in a [`crate::KvCache`]
    /// (one copy per row, [`crate::KvCache::repeat`]): its tokens sit at the positions after them
    /// and every one attends to them.
    pub fn trees(
        trees: &[PromptTree],
        past: usize,
        pad_id: u32,
        device: &B::Device,
    ) -> Result<Self> {
        if trees.is_empty() || trees.iter().any(|tree| tree.prompt.is_empty()) {
            return Err(ModelError::Input(
                "a batch needs at least one prompt and no empty prompt".into(),
            ));
        }
        let (b, t) = (trees.len(), trees.iter().map(PromptTree::columns).max().unwrap_or(0));
        let (mut ids, mut positions) = (vec![pad_id as i64; b * t], vec![0i64; b * t]);
        let keys = past + t;
        let mut mask = vec![MASKED; b * t * keys];
        for (row, tree) in trees.iter().enumerate() {
            let n = tree.prompt.len();
            let branches =
                tree.branches.iter().enumerate().map(|(i, branch)| (tree.branch_start(i), *branch));
            for (start, tokens) in std::iter::once((0, tree.prompt)).chain(branches) {
                let first = if start == 0 { 0 } else { n };
                for (j, &id) in tokens.iter().enumerate() {
                    let col = start + j;
                    ids[row * t + col] = id as i64;
                    positions[row * t + col] = (past + first + j) as i64;
                    let attends = &mut mask[(row * t + col) * keys..(row * t + col + 1) * keys];
                    attends[..past + n.min(col + 1)].fill(0.0);
                    attends[past + start..=past + col].fill(0.0);
                }
            }
            // Padding queries attend to themselves only (their outputs are never read).
            for col in tree.columns()..t {
                mask[(row * t + col) * keys + past + col] = 0.0;
            }
        }
        Ok(Self {
            ids: Tensor::from_data(TensorData::new(ids, [b, t]), device),
            positions: Tensor::from_data(TensorData::new(positions, [b, t]), device),
            mask: Tensor::from_data(TensorData::new(mask, [b, 1, t, keys]), device),
            lengths: trees.iter().map(|tree| past + tree.columns()).collect(),
            offsets: vec![0; b],
            past,
        })
    }

    /// The one-column batch that feeds `next[r]` to a row whose `columns` cached columns begin
    /// with `offsets[r]` padding columns and hold `lengths[r]` tokens of its own.
    pub fn step(
        offsets: &[usize],
        lengths: &[usize],
        columns: usize,
        next: &[u32],
        device: &B::Device,
    ) -> Self {
        let b = next.len();
        assert!(offsets.len() == b && lengths.len() == b, "one token per row");
        let keys = columns + 1;
        let key_mask: Vec<f32> = (0..b * keys)
            .map(|i| if i % keys < offsets[i / keys] { MASKED } else { 0.0 })
            .collect();
        let column = |values: Vec<i64>| Tensor::from_data(TensorData::new(values, [b, 1]), device);
        Self {
            ids: column(next.iter().map(|&id| id as i64).collect()),
            positions: column(lengths.iter().map(|&n| n as i64).collect()),
            mask: Tensor::from_data(TensorData::new(key_mask, [b, 1, 1, keys]), device),
            lengths: lengths.iter().map(|n| n + 1).collect(),
            offsets: offsets.to_vec(),
            past: columns,
        }
    }

    /// The tokens `ranges[r]` of each row (right-padded), to be run after every column of `self`
    /// (a fresh batch) went into a [`crate::KvCache`]: row `r` attends to its cached tokens before
    /// `ranges[r].start` and causally to its new ones, never to its cached tokens from
    /// `ranges[r].start` on, which the new columns replace. Token `i` of the range sits at column
    /// `i − start`. For passes that recompute only what follows a change at `ranges[r].start`.
    pub fn suffixes(&self, ranges: &[std::ops::Range<usize>]) -> Result<Self> {
        let b = self.rows();
        if self.past != 0
            || ranges.len() != b
            || ranges.iter().zip(&self.lengths).any(|(r, &n)| r.start >= r.end || r.end > n)
        {
            return Err(ModelError::Input(format!("suffixes of a fresh batch need one non-empty range within each of its {b} rows, got {ranges:?}")));
        }
        let device = self.ids.device();
        let (width, t) = (self.width(), ranges.iter().map(|r| r.len()).max().unwrap_or(0));
        let all_ids = self
            .ids
            .to_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .map_err(|e| ModelError::Input(format!("reading token ids back: {e:?}")))?;
        let columns = width + t;
        let (mut ids, mut positions, mut mask) =
            (vec![0i64; b * t], vec![0i64; b * t], vec![MASKED; b * t * columns]);
        for (row, range) in ranges.iter().enumerate() {
            let cached = self.offsets[row]..self.offsets[row] + range.start;
            for (i, token) in range.clone().enumerate() {
                ids[row * t + i] = all_ids[row * width + self.column(row, token)];
                positions[row * t + i] = token as i64;
                let keys = &mut mask[(row * t + i) * columns..(row * t + i + 1) * columns];
                keys[cached.clone()].fill(0.0);
                keys[width..=width + i].fill(0.0);
            }
        }
        Ok(Self {
            ids: Tensor::from_data(TensorData::new(ids, [b, t]), &device),
            positions: Tensor::from_data(TensorData::new(positions, [b, t]), &device),
            mask: Tensor::from_data(TensorData::new(mask, [b, 1, t, columns]), &device),
            lengths: ranges.iter().map(|r| r.end).collect(),
            offsets: vec![0; b],
            past: width,
        })
    }

    /// The vectors of `x: [b, width, d]` (activations over this batch) at the tokens `ranges`,
    /// laid out as in [`Self::suffixes`]; padding columns repeat the range's first token.
    pub fn take(&self, x: Tensor<B, 3>, ranges: &[std::ops::Range<usize>]) -> Tensor<B, 3> {
        let [b, width, d] = x.dims();
        let t = ranges.iter().map(|r| r.len()).max().unwrap_or(0);
        let flat: Vec<i64> = ranges
            .iter()
            .enumerate()
            .flat_map(|(row, r)| {
                (0..t).map(move |i| {
                    (row * width + self.column(row, r.start + i.min(r.len() - 1))) as i64
                })
            })
            .collect();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(flat, [b * t]), &x.device());
        x.reshape([b * width, d]).select(0, index).reshape([b, t, d])
    }

    pub fn rows(&self) -> usize {
        self.lengths.len()
    }

    pub fn width(&self) -> usize {
        self.ids.dims()[1]
    }

    /// Column of token `i` of `row`.
    pub fn column(&self, row: usize, i: usize) -> usize {
        self.offsets[row] + i
    }

    /// Column of the last token of `row`.
    pub fn last_column(&self, row: usize) -> usize {
        self.offsets[row] + self.lengths[row] - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Cpu = crate::backend::Cpu;

    /// Which columns each column of `row` may attend to.
    fn allowed(batch: &PromptBatch<Cpu>, row: usize) -> Vec<Vec<usize>> {
        let (t, keys) = (batch.width(), batch.mask.dims()[3]);
        let mask = batch.mask.to_data().to_vec::<f32>().unwrap();
        (0..t)
            .map(|q| (0..keys).filter(|&k| mask[(row * t + q) * keys + k] == 0.0).collect())
            .collect()
    }

    #[test]
    fn tree_rows_attend_to_the_prompt_and_their_own_branch() {
        let trees = [
            PromptTree { prompt: &[1, 2], branches: vec![&[3, 4], &[], &[5]] },
            PromptTree { prompt: &[6], branches: vec![] },
        ];
        let batch = PromptBatch::<Cpu>::trees(&trees, 0, 0, &Default::default()).unwrap();
        assert_eq!(batch.ids.to_data().to_vec::<i64>().unwrap(), [1, 2, 3, 4, 5, 6, 0, 0, 0, 0]);
        assert_eq!(
            batch.positions.to_data().to_vec::<i64>().unwrap(),
            [0, 1, 2, 3, 2, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            allowed(&batch, 0),
            [vec![0], vec![0, 1], vec![0, 1, 2], vec![0, 1, 2, 3], vec![0, 1, 4]]
        );
        assert_eq!(allowed(&batch, 1), [vec![0], vec![1], vec![2], vec![3], vec![4]]);
        assert_eq!((batch.lengths.clone(), trees[0].branch_start(2)), (vec![5, 1], 4));
    }

    #[test]
    fn trees_after_a_cached_prefix_attend_to_it_from_the_positions_after_it() {
        let trees = [
            PromptTree { prompt: &[1, 2], branches: vec![&[3]] },
            PromptTree { prompt: &[6], branches: vec![] },
        ];
        let batch = PromptBatch::<Cpu>::trees(&trees, 2, 0, &Default::default()).unwrap();
        assert_eq!(batch.positions.to_data().to_vec::<i64>().unwrap(), [2, 3, 4, 2, 0, 0]);
        assert_eq!(allowed(&batch, 0), [vec![0, 1, 2], vec![0, 1, 2, 3], vec![0, 1, 2, 3, 4]]);
        assert_eq!(allowed(&batch, 1), [vec![0, 1, 2], vec![3], vec![4]]);
        assert_eq!((batch.lengths.clone(), batch.past), (vec![5, 3], 2));
    }

    #[test]
    fn a_tree_without_a_prompt_is_refused() {
        let empty = PromptTree { prompt: &[], branches: vec![&[1]] };
        assert!(PromptBatch::<Cpu>::trees(&[empty], 0, 0, &Default::default()).is_err());
        assert!(PromptBatch::<Cpu>::trees(&[], 0, 0, &Default::default()).is_err());
    }
}
