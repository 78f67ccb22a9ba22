// llama_ref: what llama.cpp computes for prompts, to check the trainer's PyTorch
// backbone and tokenizer against (not part of the product).
//
//   llama_ref MODEL.gguf PROMPTS.txt OUT_DIR [--lora FILE SCALE]... [--threads N] [--kv-f32]
//
// PROMPTS.txt holds one prompt per line with "\n" written as the two characters
// backslash-n (and "\\" for a backslash). For every prompt, OUT_DIR/tokens.txt
// gets a line of token ids (add_special = true, parse_special = false, as the
// runtime tokenizes) and OUT_DIR/states.f32 gets the final hidden state after
// the output norm at every position, [n_tokens, n_embd] float32, prompts
// concatenated.
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <fstream>
#include <string>
#include <vector>

static std::string unescape(const std::string & s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 1 < s.size()) {
            char c = s[++i];
            out += c == 'n' ? '\n' : c == 't' ? '\t' : c;
        } else {
            out += s[i];
        }
    }
    return out;
}

static void quiet(ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_WARN) fputs(text, stderr);
}

int main(int argc, char ** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL PROMPTS OUT_DIR [--lora FILE SCALE]... [--threads N]\n", argv[0]);
        return 2;
    }
    std::vector<std::string> lora_files;
    std::vector<float> lora_scales;
    int threads = 1;
    bool kv_f32 = false;  // f32 KV cache: takes the f16 cache rounding out of a comparison
    for (int i = 4; i < argc; ++i) {
        if (!strcmp(argv[i], "--lora") && i + 2 < argc) {
            lora_files.push_back(argv[i + 1]);
            lora_scales.push_back(atof(argv[i + 2]));
            i += 2;
        } else if (!strcmp(argv[i], "--kv-f32")) {
            kv_f32 = true;
        } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            threads = atoi(argv[++i]);
        } else {
            fprintf(stderr, "bad argument %s\n", argv[i]);
            return 2;
        }
    }
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "cannot load %s\n", argv[1]); return 1; }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_embd = llama_model_n_embd(model);

    // Tokenize everything first: the context is sized to the longest prompt (a
    // bigger KV cache only makes every decode slower).
    std::ifstream in(argv[2]);
    std::vector<std::vector<llama_token>> prompts;
    size_t longest = 1;
    for (std::string line; std::getline(in, line);) {
        std::string text = unescape(line);
        int n = -llama_tokenize(vocab, text.data(), text.size(), nullptr, 0, true, false);
        std::vector<llama_token> toks(n);
        llama_tokenize(vocab, text.data(), text.size(), toks.data(), n, true, false);
        longest = std::max(longest, toks.size());
        prompts.push_back(std::move(toks));
    }

    llama_context_params cp = llama_context_default_params();
    const uint32_t n_ctx = (uint32_t) ((longest + 255) / 256 * 256);
    cp.n_ctx = n_ctx; cp.n_batch = n_ctx; cp.n_ubatch = n_ctx;
    cp.embeddings = true;
    cp.pooling_type = LLAMA_POOLING_TYPE_NONE;
    cp.n_threads = threads; cp.n_threads_batch = threads;
    if (kv_f32) { cp.type_k = GGML_TYPE_F32; cp.type_v = GGML_TYPE_F32; }
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "cannot create context\n"); return 1; }

    std::vector<llama_adapter_lora *> adapters;
    for (auto & f : lora_files) {
        llama_adapter_lora * a = llama_adapter_lora_init(model, f.c_str());
        if (!a) { fprintf(stderr, "cannot load adapter %s\n", f.c_str()); return 1; }
        adapters.push_back(a);
    }
    if (!adapters.empty() &&
        llama_set_adapters_lora(ctx, adapters.data(), adapters.size(), lora_scales.data()) != 0) {
        fprintf(stderr, "cannot set adapters\n"); return 1;
    }

    std::string out_dir = argv[3];
    FILE * ftok = fopen((out_dir + "/tokens.txt").c_str(), "w");
    FILE * fst = fopen((out_dir + "/states.f32").c_str(), "wb");
    for (const auto & toks : prompts) {
        const int n = (int) toks.size();
        for (int i = 0; i < n; ++i) fprintf(ftok, i ? " %d" : "%d", toks[i]);
        fputc('\n', ftok);

        llama_memory_clear(llama_get_memory(ctx), true);
        llama_batch batch = llama_batch_init(n, 0, 1);
        for (int i = 0; i < n; ++i) {
            batch.token[i] = toks[i]; batch.pos[i] = i; batch.n_seq_id[i] = 1;
            batch.seq_id[i][0] = 0; batch.logits[i] = 1;
        }
        batch.n_tokens = n;
        if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
        for (int i = 0; i < n; ++i) fwrite(llama_get_embeddings_ith(ctx, i), sizeof(float), n_embd, fst);
        llama_batch_free(batch);
    }
    fclose(ftok); fclose(fst);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
