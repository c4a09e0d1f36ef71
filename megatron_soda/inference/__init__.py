"""Generation from SODA models: prompts for SODA's tasks, our KV-cached decode loop, transformers'
``generate`` on exports, structured decoding, and turning what a model produced into text and audio."""
