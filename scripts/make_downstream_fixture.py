#!/usr/bin/env python3
"""Make the downstream-task fixture that crates/metrics/tests/downstream.rs compares against.

The reference is the official code's procedure (glue_eval/*_eval.py of
scalable-model-editing/unified-model-editing), run with Hugging Face transformers on SmolLM2-135M-Instruct
(the Q4_1 GGUF that scripts/fetch_smollm2.sh fetches, dequantised to f32 by transformers): for each test item
the few-shot prompt is built as the official code builds it, `prompt + " " + word` is tokenized whole, and
each label word's mean token NLL is read at the positions after the prompt's tokens. Run once by a developer;
the output is committed so CI needs no Python:

    python3 -m venv .venv && .venv/bin/pip install torch transformers gguf numpy
    .venv/bin/python scripts/make_downstream_fixture.py [DATA_DIR]   # default ../shared/data/downstream
"""
import json
import pathlib
import sys

import torch
import transformers

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "metrics" / "tests" / "fixtures" / "downstream.json"
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
FEW_SHOT = 3
ITEMS = 4  # test items per task (the first ones after the pool of 10 few-shot examples)
POOL = 10

COLA = "Is this sentence linguistically acceptable?\n"
MRPC = "Are the sentences paraphrases of each other.\n"
SENTIMENT = ("For each snippet of text,label the sentiment of the text as positive or negative."
             "The answer should be exact 'positive' or 'negative'. text:")


def letters(choices, sep):
    return "".join(f"({l}){sep}{c}\n" for l, c in zip("ABCD", choices))


# Per task: (label words in label order, label of an item, few-shot text, question text), transcribed from the
# official *_eval.py (_initialize_prompts, _create_prompt, _get_label).
TASKS = {
    "sst2": (["negative", "positive"], lambda x: x["label"],
             lambda x, a: f"Review : {x['sentence']}\nSentiment : {a}\n",
             lambda x: "Review :" + x["sentence"] + "\nSentiment :"),
    "mrpc": (["No", "Yes"], lambda x: x["label"],
             lambda x, a: f"{MRPC}Sentence 1: {x['sentence1']}\nSentence 2: {x['sentence2']}\nAnswer: {a}\n",
             lambda x: MRPC + "Sentence 1: " + x["sentence1"] + "\n" + "Sentence 2: " + x["sentence2"] + "\n"
             + "Answer:"),
    "cola": (["No", "Yes"], lambda x: x["label"],
             lambda x, a: f"{COLA}Sentence: {x['sentence']}\nAnswer: {a}\n",
             lambda x: COLA + "Sentence: " + x["sentence"] + "\n" + "Answer: "),
    "rte": (["False", "True"], lambda x: x["label"],
            lambda x, a: f"{x['sentence1']}\nquestion: {x['sentence2']} True or False?\nanswer: {a}\n",
            lambda x: x["sentence1"] + "\n" + "question: " + x["sentence2"] + " True or False?" + "\n" + "answer:"),
    "nli": (["False", "True"], lambda x: 1 if x["label"] == "entailment" else 0,
            lambda x, a: f"{x['sentence1']} entails the {x['sentence2']} True or False? Answer: {a}\n",
            lambda x: f"{x['sentence1']} entails the {x['sentence2']} True or False? Answer:"),
    "mmlu": (["A", "B", "C", "D"], lambda x: x["answer"],
             lambda x, a: f"Question: {x['question']}\n{letters(x['choices'], ' ')}Answer: {a}\n",
             lambda x: "Question: " + x["question"] + "\n" + letters(x["choices"], " ") + "Answer:"),
    "sentiment_analysis": (["negative", "positive"], lambda x: int(x["label"]),
                           lambda x, a: f"{SENTIMENT} {x['sentence']} answer: {a}\n",
                           lambda x: f"{SENTIMENT} {x['sentence']} answer:"),
    "dialogue": (["A", "B", "C", "D"], lambda x: "ABCD".index(x["answers"]),
                 lambda x, a: f"Q: Given the following: {x['article']}\nWhich choice is correct?\n"
                 f"{letters(x['options'], '')}Answer: {a}\n\n",
                 lambda x: f"Q: Given the following: {x['article']}\nWhich choice is correct?\n"
                 f"{letters(x['options'], '')}Answer:"),
}


def word_nll(model, tokenizer, prompt, word):
    """The official code's suffix score: mean NLL of `" " + word`'s tokens after the prompt's."""
    word_ids = tokenizer(f" {word}")["input_ids"]
    prefix = len(tokenizer(prompt)["input_ids"])
    ids = tokenizer([f"{prompt} {word}"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits.double()
    nll = [-torch.log_softmax(logits[0, prefix + j - 1], dim=0)[t].item() for j, t in enumerate(word_ids)]
    return sum(nll) / len(nll)


def main():
    data = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "downstream"
    tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL.parent, gguf_file=MODEL.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        MODEL.parent, gguf_file=MODEL.name, torch_dtype=torch.float32)
    model.eval()
    out = {"model": MODEL.name, "few_shot": FEW_SHOT, "transformers": transformers.__version__, "tasks": {}}
    for name, (words, label, shot, question) in TASKS.items():
        items = json.loads((data / f"{name}.json").read_text())
        context = "".join(shot(x, words[label(x)]) for x in items[:FEW_SHOT])
        rows = []
        for x in items[POOL:POOL + ITEMS]:
            prompt = context + question(x)
            nll = [word_nll(model, tokenizer, prompt, w) for w in words]
            rows.append({"prompt": prompt, "label": label(x), "nll": nll})
        out["tasks"][name] = rows
        print(name, [min(range(len(r["nll"])), key=r["nll"].__getitem__) == r["label"] for r in rows])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
