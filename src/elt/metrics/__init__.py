"""Sample-quality metrics: Fréchet distance, a local feature classifier, the any-time report."""
from .classifier import FeatureClassifier, train_classifier
from .frechet import feature_stats, frechet_distance

__all__ = ["FeatureClassifier", "train_classifier", "feature_stats", "frechet_distance"]
