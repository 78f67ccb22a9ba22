//! Our tokenizer (`l2rec::tokenizer`) against llama.cpp's own on the real
//! vocabulary: the same ids for every ml-100k item text, both views' prompts
//! of many users, and the strings that exercise each rule (user-defined
//! tokens, control-token text, byte fallback, whitespace runs, Unicode).

mod common;

use common::*;
use l2rec::ffi::gguf::GgufFile;
use l2rec::ffi::llama::{Model, Vocabulary};
use l2rec::prompt::{ItemRef, Label, View};
use l2rec::tokenizer::Tokenizer;

fn pair() -> (Model, Tokenizer) {
    let info = model_info();
    let llama =
        Model::load(&info.path, false, Vocabulary::Llama).expect("load with its vocabulary");
    let ours = Tokenizer::from_gguf(&GgufFile::open(&info.path).unwrap()).unwrap();
    (llama, ours)
}

fn assert_same(llama: &Model, ours: &Tokenizer, text: &str) {
    assert_eq!(ours.encode(text), llama.tokenize(text).unwrap(), "{text:?}");
}

#[test]
fn every_rule_gives_llama_cpps_ids() {
    let (llama, ours) = pair();
    assert_eq!(ours.len(), 262_144);
    for text in [
        "",
        " ",
        "a",
        "  two leading spaces",
        "trailing   ",
        "Toy Story (1995); Animation, Children's, Comedy",
        "<bos> is text here, and so are </s>, <eos> and <start_of_turn>",
        "<b>bold</b> <i>it</i> <table><tr><td>",
        "a\n\nb\n\n\n\nc\r\nd\te\t\tf",
        "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\nend",
        "                                                            wide",
        "Amélie, Ça, naïve, smörgåsbord, Straße",
        "映画 を 見た 🎬🍿 ✨ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u{10FFFF} \u{200B}zero width",
        "<0x41> ▁ ▁▁ __ #1 #22 #333 #1682",
        "Items a user interacted with, oldest first:\n#1\n#22\n",
        "Movies a user watched, oldest first:\nKolya (1996)\nGoldenEye (1995)\n",
    ] {
        assert_same(&llama, &ours, text);
    }
}

#[test]
fn every_item_text_and_prompt_gives_llama_cpps_ids() {
    let (llama, ours) = pair();
    let data = dataset();
    for row in 0..data.catalog.len() {
        assert_same(&llama, &ours, &data.catalog.text_with_categories(row));
        assert_same(&llama, &ours, &data.catalog.texts[row]);
    }
    let (behavioral, semantic) = l2rec_dev::zeroshot::default_templates();
    for history in data.histories.iter().step_by(19) {
        let rows = &history.rows[history.rows.len().saturating_sub(50)..];
        let ids: Vec<String> = rows
            .iter()
            .map(|&r| data.catalog.ids[r as usize].clone())
            .collect();
        let by_id = behavioral.render(
            View::Behavioral,
            ids.iter().map(|id| ItemRef {
                id,
                text: "",
                label: Label::Id,
            }),
        );
        // Version 2's codes: three letters from three alphabets per item.
        let codes: Vec<String> = rows
            .iter()
            .map(|&r| {
                let r = r as usize;
                let (a, b, c) = (r % 26, (r / 26) % 26, (r / 676) % 26);
                format!(
                    "{} {} {}",
                    char::from(b'A' + a as u8),
                    char::from(b'a' + b as u8),
                    char::from(b'A' + c as u8)
                )
            })
            .collect();
        let by_code = behavioral.render(
            View::Behavioral,
            codes.iter().map(|code| ItemRef {
                id: "",
                text: "",
                label: Label::Code(code),
            }),
        );
        assert_same(&llama, &ours, &by_code);
        let by_text = semantic.render(
            View::Semantic,
            rows.iter()
                .map(|&r| ItemRef::text_only(&data.catalog.texts[r as usize])),
        );
        assert_same(&llama, &ours, &by_id);
        assert_same(&llama, &ours, &by_text);
    }
}
