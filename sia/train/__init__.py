"""Training of the weights lever: LoRA adapters from gold targets (sft) or from rewarded
rollouts (rs_sft, grpo, eaw, ppo), and the rule that picks among them."""
from sia.train.choose import ALGORITHMS, choose_algorithm
from sia.train.samples import RewardStats, Sample, reward_stats
from sia.train.sft import train_sft
from sia.train.trainer import TrainResult, train_adapter

__all__ = ["ALGORITHMS", "RewardStats", "Sample", "TrainResult", "choose_algorithm", "reward_stats",
           "train_adapter", "train_sft"]
