"""Evaluation of SODA models: SODA's likelihood benchmarks (sWUGGY, sBLIMP, SALMon, tWUGGY, tBLIMP,
HellaSwag) and generation benchmarks (ASR and TTS WER), on our checkpoints and Hugging Face exports."""
