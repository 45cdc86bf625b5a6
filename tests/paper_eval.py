"""Constructed evaluation records with known properties, for checking this project's metrics against the paper's
evaluation script (3_eval/metrics.py of the released code), and a detector that replays recorded lingua decisions.

The fixtures under tests/fixtures/paper_eval/ were made from these records:
    lingua_<benchmark>.json   every decision lingua 2.1.1 made while adamame.scoring scored them
                              (python tests/paper_eval.py record, with lingua-language-detector installed)
    paper_<benchmark>.csv     the CSV the paper's unmodified script wrote for them (its DATASET_TYPE set to mgsmv2 or
                              msvamp; records written with `python tests/paper_eval.py write DIR`, in its
                              res/<DATASET_TYPE>/<lang>.jsonl layout), with lingua and Math-Verify
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "paper_eval")
DATASET_TYPE = {"mgsm": "mgsmv2", "msvamp": "msvamp"}

# Four lines of reasoning per language (a GSM8K-like problem), the third with inline math.
TRACES = {
    "fr": ["Janet a seize canards qui pondent des œufs chaque jour.",
           "Elle en mange trois le matin et en utilise quatre pour faire des muffins.",
           "Il lui reste donc $16 - 3 - 4 = 9$ œufs à vendre au marché.",
           "Elle les vend deux dollars chacun, ce qui lui rapporte dix-huit dollars."],
    "en": ["Janet has sixteen ducks that lay eggs every day.",
           "She eats three in the morning and uses four to bake muffins.",
           "So she has $16 - 3 - 4 = 9$ eggs left to sell at the market.",
           "She sells them for two dollars each, which makes eighteen dollars."],
    "es": ["Janet tiene dieciséis patos que ponen huevos todos los días.",
           "Se come tres por la mañana y usa cuatro para hacer magdalenas.",
           "Le quedan $16 - 3 - 4 = 9$ huevos para vender en el mercado.",
           "Los vende a dos dólares cada uno, así que gana dieciocho dólares."],
    "de": ["Janet hat sechzehn Enten, die jeden Tag Eier legen.",
           "Sie isst drei zum Frühstück und backt mit vier davon Muffins.",
           "Es bleiben also $16 - 3 - 4 = 9$ Eier für den Markt übrig.",
           "Sie verkauft sie für zwei Dollar pro Stück und verdient achtzehn Dollar."],
    "ja": ["ジャネットのアヒルは毎日十六個の卵を産みます。",
           "朝食に三個食べて、マフィンを焼くのに四個使います。",
           "残りの卵は $16 - 3 - 4 = 9$ 個で、市場で売ります。",
           "一個二ドルで売るので、十八ドルになります。"],
    "zh": ["珍妮特的鸭子每天下十六个蛋。",
           "她早餐吃三个，再用四个烤松饼。",
           "剩下的 $16 - 3 - 4 = 9$ 个蛋拿到市场去卖。",
           "每个蛋卖两美元，所以她每天赚十八美元。"],
    "ko": ["재닛의 오리들은 매일 열여섯 개의 알을 낳습니다.",
           "아침에 세 개를 먹고 머핀을 굽는 데 네 개를 씁니다.",
           "남은 달걀 $16 - 3 - 4 = 9$ 개를 시장에서 팝니다.",
           "한 개에 이 달러씩 받으니 모두 십팔 달러를 법니다."],
    "th": ["เป็ดของเจเน็ตออกไข่ทุกวันวันละสิบหกฟอง",
           "เธอกินไข่สามฟองตอนเช้าและใช้อีกสี่ฟองอบมัฟฟิน",
           "จึงเหลือไข่ $16 - 3 - 4 = 9$ ฟองไว้ขายที่ตลาด",
           "เธอขายไข่ฟองละสองดอลลาร์ จึงได้เงินสิบแปดดอลลาร์"],
    "ru": ["У Джанет шестнадцать уток, которые каждый день несут яйца.",
           "Она съедает три яйца на завтрак и печёт маффины из четырёх.",
           "Остаётся $16 - 3 - 4 = 9$ яиц, которые она продаёт на рынке.",
           "Она продаёт их по два доллара и получает восемнадцать долларов."],
    "bn": ["জ্যানেটের হাঁসগুলো প্রতিদিন ষোলটি ডিম পাড়ে।",
           "সে সকালে তিনটি ডিম খায় এবং মাফিন বানাতে চারটি ব্যবহার করে।",
           "বাকি থাকে $16 - 3 - 4 = 9$ টি ডিম, যা সে বাজারে বিক্রি করে।",
           "প্রতিটি ডিম দুই ডলারে বিক্রি করে সে আঠারো ডলার পায়।"],
    "sw": ["Bata wa Janet hutaga mayai kumi na sita kila siku.",
           "Anakula mayai matatu asubuhi na anatumia manne kuoka mikate.",
           "Kwa hiyo yanabaki mayai $16 - 3 - 4 = 9$ ya kuuza sokoni.",
           "Anauza kila yai kwa dola mbili, hivyo anapata dola kumi na nane."],
    "te": ["జానెట్ బాతులు ప్రతిరోజూ పదహారు గుడ్లు పెడతాయి.",
           "ఆమె ఉదయం మూడు గుడ్లు తింటుంది, మఫిన్ల కోసం నాలుగు వాడుతుంది.",
           "మిగిలిన $16 - 3 - 4 = 9$ గుడ్లను ఆమె మార్కెట్లో అమ్ముతుంది.",
           "ఒక్కో గుడ్డును రెండు డాలర్లకు అమ్మి ఆమె పద్దెనిమిది డాలర్లు సంపాదిస్తుంది."],
}
# the paper script's languages, in its order (it evaluates no others)
LANGUAGES = {"mgsm": ["fr", "ja", "ko", "th", "bn", "en", "es", "ru", "sw", "te", "zh", "de"],
             "msvamp": ["fr", "ja", "ko", "th", "en", "es", "zh"]}
GOLDS = ["18", "9", "42"]


def _trace(lang, lines=None):
    return "\n".join(TRACES[lang][i] for i in (lines or range(4)))


def candidates(lang: str, q: int, gold: str) -> list:
    """Four candidates with known properties, their order rotated by question (the first decides pass@1)."""
    other = "en" if lang != "en" else "fr"
    wrong = str(int(gold) + 1)
    english_word = "the eggs" if lang not in ("en", "de", "es", "fr", "sw") else "卵"
    pool = [
        f"<think>\n{_trace(lang)}\n</think>\n\n\\boxed{{{gold}}}",  # faithful, correct
        f"<think>\n{_trace(other)}\n</think>\n\n\\boxed{{{gold}}}",  # collapsed, correct
        # switches language half-way (line and code-switch failures), wrong
        f"<think>\n{_trace(lang, [0, 1])}\n{_trace(other, [2, 3])}\n</think>\n\n\\boxed{{{wrong}}}",
        [  # one more, per question: a foreign word (word check), no </think> (no trace), math-only lines
            f"<think>\n{_trace(lang, [0, 1])} ({english_word})\n{_trace(lang, [2, 3])}\n</think>\n\n\\boxed{{{gold}}}",
            f"{_trace(lang)}\n\\boxed{{{gold}}}",
            f"<think>\n$$16 - 3 - 4 = 9$$\n\\[9 \\times 2 = {gold}\\]\n{_trace(lang, [3])}\n</think>\n\\boxed{{{gold}}}",
        ][q % 3],
    ]
    return pool[q % 4:] + pool[:q % 4]


def records(benchmark: str) -> list:
    """Generation records (evaluate.py's format) for every language of the benchmark's script run."""
    out = []
    for lang in LANGUAGES[benchmark]:
        for q, gold in enumerate(GOLDS):
            rec = {"id": f"{lang}-{q}", "lang": lang, "question": f"q{q}", "answer": gold,
                   "candidates": candidates(lang, q, gold)}
            if q != 1:
                rec["time"] = f"{q + 1:02d}:{7 * q + 5:02d}"
            out.append(rec)
    return out


class Replay:
    """A lingua stand-in that replays recorded decisions (adamame.language.Detector's interface): a text it has no
    record of is an error, so a changed record or rule shows up as a failing test, not as a silent guess."""

    name, version = "lingua (recorded)", "lingua-language-detector (recorded decisions)"

    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
        self.languages, self._detect, self._multiple = tuple(rec["languages"]), rec["detect"], rec["multiple"]

    def detect(self, text):
        if not text:
            return None
        return self._detect[text]

    def line_language(self, text):
        return self.detect(text)

    def languages_in(self, text, line_languages=None):
        return list(self._multiple[text]) if text else []


class Recorder:
    """Wraps a real detector and keeps every decision it makes (to write a Replay fixture)."""

    def __init__(self, inner):
        self.inner, self.name, self.version, self.languages = inner, inner.name, inner.version, inner.languages
        self.detected, self.multiple = {}, {}

    def detect(self, text):
        self.detected[text] = out = self.inner.detect(text)
        return out

    def line_language(self, text):
        return self.detect(text)

    def languages_in(self, text, line_languages=None):
        self.multiple[text] = out = self.inner.languages_in(text, line_languages)
        return out


def _score(benchmark, detector, verifier="builtin"):
    from adamame.language import TRAIN_LANGUAGES, get_detector
    from adamame.scoring import score_record

    train = get_detector("langid", TRAIN_LANGUAGES)
    return [score_record(r, verifier=verifier, detector=detector, train_detector=train) for r in records(benchmark)]


def main(argv):
    sys.path.insert(0, ROOT)
    from adamame.language import BENCHMARK_LANGUAGES, get_detector

    if argv[:1] == ["record"]:
        os.makedirs(FIXTURES, exist_ok=True)
        for bench in DATASET_TYPE:
            rec = Recorder(get_detector("lingua", BENCHMARK_LANGUAGES[bench]))
            _score(bench, rec)
            with open(os.path.join(FIXTURES, f"lingua_{bench}.json"), "w", encoding="utf-8") as f:
                json.dump({"version": rec.version, "languages": list(rec.languages), "detect": rec.detected,
                           "multiple": rec.multiple}, f, ensure_ascii=False, indent=0, sort_keys=True)
        return 0
    if argv[:1] == ["write"]:  # the records in the paper script's input layout
        for bench, dataset in DATASET_TYPE.items():
            folder = os.path.join(argv[1], bench, "res", dataset)
            os.makedirs(folder, exist_ok=True)
            for lang in LANGUAGES[bench]:
                with open(os.path.join(folder, f"{lang}.jsonl"), "w", encoding="utf-8") as f:
                    for r in records(bench):
                        if r["lang"] == lang:
                            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        return 0
    raise SystemExit("usage: python tests/paper_eval.py record | write DIR")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
