//! The continuation prompt, in the language the answer is written in.
//!
//! Detection uses whatlang restricted to the languages we have prompts for;
//! an unreliable result counts as unknown, and short text falls back to its
//! script (Han, kana, Hangul, Cyrillic, Arabic). Unknown → English.

use std::collections::BTreeMap;

use whatlang::{Detector, Lang, Script};

/// Built-in prompts by ISO 639-1 code. Each asks the model to go on exactly
/// where the text stopped, in the same language and format, repeating nothing.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "en",
        "Your previous reply was cut off. Continue exactly where the text stopped, in the same language and format, without repeating anything you already wrote and without any preamble.",
    ),
    (
        "zh",
        "你上一条回复被截断了。请从文本中断的地方准确地继续，使用相同的语言和格式，不要重复已经写过的任何内容，也不要添加任何开场白。",
    ),
    (
        "ja",
        "前回の回答は途中で切れました。文章が止まったところから、同じ言語と形式で、すでに書いた内容を繰り返さず、前置きなしでそのまま続けてください。",
    ),
    (
        "ko",
        "이전 답변이 중간에 끊겼습니다. 텍스트가 멈춘 곳에서 정확히 이어서, 같은 언어와 형식으로, 이미 쓴 내용을 반복하지 말고 서두 없이 계속 작성해 주세요.",
    ),
    (
        "es",
        "Tu respuesta anterior se cortó. Continúa exactamente donde se detuvo el texto, en el mismo idioma y formato, sin repetir nada de lo que ya escribiste y sin ningún preámbulo.",
    ),
    (
        "fr",
        "Ta réponse précédente a été interrompue. Reprends exactement là où le texte s'est arrêté, dans la même langue et le même format, sans répéter ce que tu as déjà écrit et sans préambule.",
    ),
    (
        "de",
        "Deine vorherige Antwort wurde abgeschnitten. Fahre genau dort fort, wo der Text aufgehört hat, in derselben Sprache und im selben Format, ohne etwas bereits Geschriebenes zu wiederholen und ohne Einleitung.",
    ),
    (
        "ru",
        "Твой предыдущий ответ оборвался. Продолжи точно с того места, где остановился текст, на том же языке и в том же формате, ничего не повторяя из уже написанного и без вступления.",
    ),
    (
        "pt",
        "Sua resposta anterior foi interrompida. Continue exatamente de onde o texto parou, no mesmo idioma e formato, sem repetir nada do que já escreveu e sem preâmbulo.",
    ),
    (
        "it",
        "La tua risposta precedente è stata interrotta. Continua esattamente dal punto in cui il testo si è fermato, nella stessa lingua e nello stesso formato, senza ripetere nulla di ciò che hai già scritto e senza preamboli.",
    ),
    (
        "ar",
        "تم قطع ردك السابق. تابع بالضبط من حيث توقف النص، بنفس اللغة والتنسيق، دون تكرار أي شيء كتبته بالفعل ودون أي مقدمة.",
    ),
];

/// Below this many characters whatlang's guess is not trusted unless reliable;
/// the script decides.
const SHORT_TEXT: usize = 40;

fn lang_code(lang: Lang) -> Option<&'static str> {
    Some(match lang {
        Lang::Eng => "en",
        Lang::Cmn => "zh",
        Lang::Jpn => "ja",
        Lang::Kor => "ko",
        Lang::Spa => "es",
        Lang::Fra => "fr",
        Lang::Deu => "de",
        Lang::Rus => "ru",
        Lang::Por => "pt",
        Lang::Ita => "it",
        Lang::Ara => "ar",
        _ => return None,
    })
}

/// The language of `text` as an ISO 639-1 code we have a prompt for, if
/// it can be told.
pub fn detect(text: &str) -> Option<&'static str> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    // Kana anywhere means Japanese (whatlang reads kanji-heavy text as Chinese).
    if text.chars().any(|c| matches!(c, '\u{3040}'..='\u{30ff}')) {
        return Some("ja");
    }
    let allow = vec![
        Lang::Eng,
        Lang::Cmn,
        Lang::Jpn,
        Lang::Kor,
        Lang::Spa,
        Lang::Fra,
        Lang::Deu,
        Lang::Rus,
        Lang::Por,
        Lang::Ita,
        Lang::Ara,
    ];
    let detector = Detector::with_allowlist(allow);
    if let Some(info) = detector.detect(text)
        && (info.is_reliable() || (text.chars().count() >= SHORT_TEXT && info.confidence() >= 0.5))
    {
        return lang_code(info.lang());
    }
    match whatlang::detect_script(text)? {
        Script::Mandarin => Some("zh"),
        Script::Hiragana | Script::Katakana => Some("ja"),
        Script::Hangul => Some("ko"),
        Script::Cyrillic => Some("ru"),
        Script::Arabic => Some("ar"),
        _ => None,
    }
}

/// The prompt to send: detected from the answer text, else the thoughts,
/// else the user's last message; overrides by language first, then the
/// built-ins; English when nothing can be told.
pub fn choose<'a>(
    answer: &str,
    thoughts: &str,
    last_user: &str,
    overrides: &'a BTreeMap<String, String>,
) -> (&'static str, &'a str)
where
    'static: 'a,
{
    let lang = detect(answer).or_else(|| detect(thoughts)).or_else(|| detect(last_user)).unwrap_or("en");
    if let Some(p) = overrides.get(lang) {
        return (lang, p.as_str());
    }
    let builtin = BUILTIN.iter().find(|(l, _)| *l == lang).map_or(BUILTIN[0].1, |(_, p)| p);
    (lang, builtin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages() {
        let cases = [
            ("The sky appears blue because molecules in the atmosphere scatter shorter wavelengths", "en"),
            ("天空之所以呈现蓝色，是因为大气中的分子对短波长的光散射得更强烈", "zh"),
            ("空が青く見えるのは、大気中の分子が短い波長の光をより強く散乱するためです", "ja"),
            ("하늘이 파랗게 보이는 이유는 대기 중의 분자가 짧은 파장의 빛을 더 강하게 산란시키기 때문입니다", "ko"),
            ("Небо кажется голубым, потому что молекулы в атмосфере сильнее рассеивают короткие волны", "ru"),
            (
                "Der Himmel erscheint blau, weil die Moleküle in der Atmosphäre kurzwelliges Licht stärker streuen als langwelliges. Übrigens",
                "de",
            ),
            (
                "Le ciel paraît bleu parce que les molécules de l'atmosphère diffusent davantage la lumière de courte longueur d'onde",
                "fr",
            ),
            (
                "El cielo se ve azul porque las moléculas de la atmósfera dispersan más la luz de longitud de onda corta",
                "es",
            ),
            (
                "O céu parece azul porque as moléculas da atmosfera espalham mais a luz de comprimento de onda curto",
                "pt",
            ),
            (
                "Il cielo appare blu perché le molecole dell'atmosfera diffondono maggiormente la luce a lunghezza d'onda corta",
                "it",
            ),
            ("تبدو السماء زرقاء لأن جزيئات الغلاف الجوي تشتت الضوء ذا الطول الموجي القصير أكثر", "ar"),
            ("你好", "zh"),
            ("こんにちは", "ja"),
            ("안녕", "ko"),
            ("Привет", "ru"),
        ];
        for (text, want) in cases {
            assert_eq!(detect(text), Some(want), "{text}");
        }
        assert_eq!(detect("   "), None);
        assert_eq!(detect("fn main() { x += 1; }"), None, "code is not a language");
    }

    #[test]
    fn choice_order_and_overrides() {
        let none = BTreeMap::new();
        assert_eq!(choose("", "", "", &none).0, "en");
        assert_eq!(
            choose("", "Der Nutzer möchte wissen, warum der Himmel blau ist, und ich erkläre es", "hi", &none).0,
            "de"
        );
        assert_eq!(
            choose("Das ist die Antwort auf deine Frage über den Himmel und seine Farbe", "The user asks", "", &none).0,
            "de"
        );
        assert_eq!(choose("", "", "为什么天空是蓝色的？", &none).0, "zh");
        let mut o = BTreeMap::new();
        o.insert("zh".to_owned(), "继续".to_owned());
        assert_eq!(choose("天空之所以呈现蓝色", "", "", &o), ("zh", "继续"));
        assert_eq!(choose("", "", "", &o).1, BUILTIN[0].1);
    }
}
