"""LLM backends behind one protocol (base.py): openai, anthropic, local."""
