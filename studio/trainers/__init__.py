"""Trainers on one skeleton (:mod:`studio.trainers.base`): pretrain, and the finetuning methods."""
