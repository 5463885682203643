//! What the model's logits mean to a caller: probabilities and the top-k classes.

use serde::Serialize;
use utoipa::ToSchema;

/// One class in a top-k answer.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Scored {
    pub label: String,
    pub class_id: usize,
    pub probability: f32,
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// The `k` most probable classes, most probable first (ties by class id).
pub fn top_k(logits: &[f32], class_names: &[String], k: usize) -> Vec<Scored> {
    let probs = softmax(logits);
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|class_id| Scored {
            label: class_names.get(class_id).cloned().unwrap_or_default(),
            class_id,
            probability: probs[class_id],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_a_distribution_and_stable() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6 && p[2] == 0.0);
        assert!((softmax(&[0.1, 2.0, -3.0]).iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn top_k_orders_by_probability_then_id() {
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let top = top_k(&[1.0, 3.0, 1.0], &names, 5);
        let ids: Vec<usize> = top.iter().map(|s| s.class_id).collect();
        assert_eq!(ids, [1, 0, 2]);
        assert_eq!(top[0].label, "b");
        assert_eq!(top_k(&[1.0, 3.0, 1.0], &names, 1).len(), 1);
    }
}
