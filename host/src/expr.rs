//! `${{ ... }}` expressions in manifests.
//!
//! Inside any string of a stage's `with:` an expression is replaced by its
//! value; `if:` is one boolean expression. The language is deliberately small:
//!
//! - references: `vars.NAME`, `secrets.NAME` (not in `if:`), `run.id`,
//!   `run.commit`, `run.branch`, `run.ref` (`refs/heads/main`, `refs/tags/v1`),
//!   `run.commit-messages` (the messages of the commits that triggered the run,
//!   newest first, separated by blank lines), `run.environment`, `run.pipeline`,
//!   `run.promoted-from` (the run a promotion carries results from; empty
//!   otherwise), `run.previous-commit` (the commit of the last run of the
//!   pipeline that succeeded in this environment; empty on the first one),
//!   `run.url` (the run's page in `gantry serve`; empty under `gantry run`),
//!   `stages.NAME.outputs.KEY`
//!   (a key may hold dots: `stages.test.outputs.tests.passed`, or
//!   `stages.test.outputs['tests.passed']`);
//! - string literals `'text'`, `true`, `false`;
//! - `==`, `!=`, `!`, `&&`, `||` and parentheses.
//!
//! A value is a string; `true` is the string `true`, and a string is truthy
//! unless it is empty or `false`.

use std::fmt;

/// Something an expression reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ref {
    Var(String),
    Secret(String),
    Run(String),
    Output { stage: String, key: String },
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ref::Var(n) => write!(f, "vars.{n}"),
            Ref::Secret(n) => write!(f, "secrets.{n}"),
            Ref::Run(n) => write!(f, "run.{n}"),
            Ref::Output { stage, key } => write!(f, "stages.{stage}.outputs.{key}"),
        }
    }
}

/// The fields of `run`.
pub const RUN_FIELDS: &[&str] = &[
    "id",
    "commit",
    "environment",
    "pipeline",
    "branch",
    "ref",
    "commit-messages",
    "promoted-from",
    "previous-commit",
    "url",
];

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Ref(Ref),
    Lit(String),
    Not(Box<Expr>),
    Eq(Box<Expr>, Box<Expr>),
    Ne(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

impl Expr {
    /// Every reference in the expression.
    pub fn refs(&self, out: &mut Vec<Ref>) {
        match self {
            Expr::Ref(r) => out.push(r.clone()),
            Expr::Lit(_) => {}
            Expr::Not(e) => e.refs(out),
            Expr::Eq(a, b) | Expr::Ne(a, b) | Expr::And(a, b) | Expr::Or(a, b) => {
                a.refs(out);
                b.refs(out);
            }
        }
    }

    /// Evaluate with `lookup`; a reference it cannot resolve is an error.
    pub fn eval(&self, lookup: &dyn Fn(&Ref) -> Option<String>) -> Result<String, String> {
        let truthy = |s: &str| !s.is_empty() && s != "false";
        let b = |v: bool| v.to_string();
        Ok(match self {
            Expr::Ref(r) => lookup(r).ok_or_else(|| format!("`{r}` has no value"))?,
            Expr::Lit(s) => s.clone(),
            Expr::Not(e) => b(!truthy(&e.eval(lookup)?)),
            Expr::Eq(x, y) => b(x.eval(lookup)? == y.eval(lookup)?),
            Expr::Ne(x, y) => b(x.eval(lookup)? != y.eval(lookup)?),
            Expr::And(x, y) => b(truthy(&x.eval(lookup)?) && truthy(&y.eval(lookup)?)),
            Expr::Or(x, y) => b(truthy(&x.eval(lookup)?) || truthy(&y.eval(lookup)?)),
        })
    }

    pub fn eval_bool(&self, lookup: &dyn Fn(&Ref) -> Option<String>) -> Result<bool, String> {
        let v = self.eval(lookup)?;
        Ok(!v.is_empty() && v != "false")
    }
}

/// A string with embedded expressions.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Expr(Expr),
}

/// Split `text` into literal text and `${{ ... }}` expressions.
pub fn parse_template(text: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = vec![];
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        if start > 0 {
            pieces.push(Piece::Text(rest[..start].to_string()));
        }
        let after = &rest[start + 3..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("`${{{{` without a closing `}}}}` in `{text}`"))?;
        pieces.push(Piece::Expr(parse(&after[..end])?));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    Ok(pieces)
}

/// Render a parsed template.
pub fn render(pieces: &[Piece], lookup: &dyn Fn(&Ref) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Expr(e) => out.push_str(&e.eval(lookup)?),
        }
    }
    Ok(out)
}

/// Parse an expression; `${{ }}` around it is optional (for `if:`).
pub fn parse(text: &str) -> Result<Expr, String> {
    let inner = text.trim();
    let inner = inner
        .strip_prefix("${{")
        .and_then(|s| s.strip_suffix("}}"))
        .unwrap_or(inner);
    let tokens = tokenize(inner)?;
    let mut p = Parser {
        tokens: &tokens,
        pos: 0,
        source: inner,
    };
    let e = p.or()?;
    if p.pos != tokens.len() {
        return Err(format!("unexpected `{}` in `{inner}`", tokens[p.pos]));
    }
    Ok(e)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Op(&'static str),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Word(w) => write!(f, "{w}"),
            Tok::Str(s) => write!(f, "'{s}'"),
            Tok::Op(o) => write!(f, "{o}"),
        }
    }
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = vec![];
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            let end = chars[i + 1..]
                .iter()
                .position(|&c| c == '\'')
                .ok_or_else(|| format!("unterminated string in `{s}`"))?;
            out.push(Tok::Str(chars[i + 1..i + 1 + end].iter().collect()));
            i += end + 2;
        } else if let Some(op) = ["==", "!=", "&&", "||", "!", "(", ")"]
            .into_iter()
            .find(|op| chars[i..].starts_with(&op.chars().collect::<Vec<_>>()))
        {
            out.push(Tok::Op(op));
            i += op.len();
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || "_-.".contains(chars[i])) {
                i += 1;
            }
            let mut word: String = chars[start..i].iter().collect();
            // `outputs['tests.passed']`: a key written as a string, read as if
            // it followed a dot (output keys may hold dots themselves).
            while chars.get(i) == Some(&'[') && chars.get(i + 1) == Some(&'\'') {
                let close = chars[i + 2..]
                    .windows(2)
                    .position(|w| w == ['\'', ']'])
                    .ok_or_else(|| format!("`['` without a closing `']` in `{s}`"))?;
                word.push('.');
                word.extend(&chars[i + 2..i + 2 + close]);
                i += close + 4;
            }
            out.push(Tok::Word(word));
        } else {
            return Err(format!("unexpected `{c}` in `{s}`"));
        }
    }
    if out.is_empty() {
        return Err("empty expression".into());
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: &'a [Tok],
    pos: usize,
    source: &'a str,
}

impl Parser<'_> {
    fn eat(&mut self, op: &'static str) -> bool {
        let hit = self.tokens.get(self.pos) == Some(&Tok::Op(op));
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut e = self.and()?;
        while self.eat("||") {
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut e = self.cmp()?;
        while self.eat("&&") {
            e = Expr::And(Box::new(e), Box::new(self.cmp()?));
        }
        Ok(e)
    }

    fn cmp(&mut self) -> Result<Expr, String> {
        let e = self.unary()?;
        if self.eat("==") {
            return Ok(Expr::Eq(Box::new(e), Box::new(self.unary()?)));
        }
        if self.eat("!=") {
            return Ok(Expr::Ne(Box::new(e), Box::new(self.unary()?)));
        }
        Ok(e)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.eat("!") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.eat("(") {
            let e = self.or()?;
            if !self.eat(")") {
                return Err(format!("missing `)` in `{}`", self.source));
            }
            return Ok(e);
        }
        let tok = self
            .tokens
            .get(self.pos)
            .ok_or_else(|| format!("`{}` ends too early", self.source))?;
        self.pos += 1;
        match tok {
            Tok::Str(s) => Ok(Expr::Lit(s.clone())),
            Tok::Word(w) if w == "true" || w == "false" => Ok(Expr::Lit(w.clone())),
            Tok::Word(w) => reference(w).map(Expr::Ref),
            Tok::Op(o) => Err(format!("unexpected `{o}` in `{}`", self.source)),
        }
    }
}

fn reference(word: &str) -> Result<Ref, String> {
    let parts: Vec<&str> = word.split('.').collect();
    let bad = |why: &str| Err(format!("`{word}`: {why}"));
    match parts.as_slice() {
        ["vars", name] if !name.is_empty() => Ok(Ref::Var(name.to_string())),
        ["secrets", name] if !name.is_empty() => Ok(Ref::Secret(name.to_string())),
        ["run", field] if RUN_FIELDS.contains(field) => Ok(Ref::Run(field.to_string())),
        ["run", _] => bad(&format!("`run` has {}", RUN_FIELDS.join(", "))),
        // Everything after `outputs.` is the key, so dotted keys such as
        // `tests.passed` need no quoting.
        ["stages", stage, "outputs", key @ ..]
            if !stage.is_empty() && !key.is_empty() && key.iter().all(|k| !k.is_empty()) =>
        {
            Ok(Ref::Output {
                stage: stage.to_string(),
                key: key.join("."),
            })
        }
        ["stages", ..] => bad("write `stages.NAME.outputs.KEY`"),
        _ => bad("expressions read `vars.*`, `secrets.*`, `run.*` or `stages.NAME.outputs.KEY`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(r: &Ref) -> Option<String> {
        match r {
            Ref::Var(n) if n == "REGION" => Some("westeurope".into()),
            Ref::Run(f) if f == "environment" => Some("production".into()),
            Ref::Output { stage, key } if stage == "push" && key == "digest" => {
                Some("sha256:ab".into())
            }
            _ => None,
        }
    }

    #[test]
    fn templates_substitute_references() {
        let t =
            parse_template("img@${{ stages.push.outputs.digest }} in ${{vars.REGION}}").unwrap();
        assert_eq!(render(&t, &lookup).unwrap(), "img@sha256:ab in westeurope");
        assert_eq!(
            parse_template("plain").unwrap(),
            vec![Piece::Text("plain".into())]
        );
        assert!(
            parse_template("${{ vars.X")
                .unwrap_err()
                .contains("without a closing")
        );
        assert!(
            render(&parse_template("${{ vars.NOPE }}").unwrap(), &lookup)
                .unwrap_err()
                .contains("`vars.NOPE` has no value")
        );
    }

    #[test]
    fn dotted_output_keys_are_addressed_plain_or_quoted() {
        let key = |s: &str| match parse(s).unwrap() {
            Expr::Ref(Ref::Output { stage, key }) => (stage, key),
            other => panic!("{other:?}"),
        };
        let want = ("test".to_string(), "tests.passed".to_string());
        assert_eq!(key("stages.test.outputs.tests.passed"), want);
        assert_eq!(key("stages.test.outputs['tests.passed']"), want);
        assert_eq!(key("stages.test.outputs.digest").1, "digest");
        assert!(
            parse("stages.test.outputs['open")
                .unwrap_err()
                .contains("without a closing")
        );
        assert!(parse("stages.test.outputs..x").is_err());
    }

    #[test]
    fn conditions() {
        let t = |s: &str| parse(s).unwrap().eval_bool(&lookup).unwrap();
        assert!(t("run.environment == 'production'"));
        assert!(!t("${{ run.environment != 'production' }}"));
        assert!(t(
            "vars.REGION == 'westeurope' && !(run.environment == 'dev')"
        ));
        assert!(t("false || true"));
        assert!(!t("!vars.REGION"));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(
            parse("run.nope")
                .unwrap_err()
                .contains("`run` has id, commit")
        );
        assert!(
            parse("stages.x.digest")
                .unwrap_err()
                .contains("stages.NAME.outputs.KEY")
        );
        assert!(parse("env.HOME").unwrap_err().contains("expressions read"));
        assert!(parse("'open").unwrap_err().contains("unterminated"));
        assert!(parse("(true").unwrap_err().contains("missing `)`"));
        assert!(
            parse("true true")
                .unwrap_err()
                .contains("unexpected `true`")
        );
        assert!(parse("").unwrap_err().contains("empty"));
    }
}
