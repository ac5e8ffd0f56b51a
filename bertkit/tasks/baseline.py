"""The baseline every text-classification report shows beside the model: TF-IDF + a linear model.

A fine-tuned BERT costs minutes of training and milliseconds per prediction; a bag-of-words
linear model trained on the same file costs a second. When the model does not beat it, the
user should see that at once. The baseline is the standard one: word uni- and bigrams with
sublinear TF-IDF weights, then logistic regression (classification) or ridge regression
(regression), scikit-learn's implementations with their default regularisation. A text pair
is one document: the two texts joined, each word marked by its side ("a:" / "b:"), so the
bag keeps which text a word came from.
"""

from __future__ import annotations

from collections.abc import Sequence

BASELINE_NAME = "tf-idf + logistic regression"
REGRESSION_BASELINE_NAME = "tf-idf + ridge regression"


def _documents(texts: Sequence[str], pairs: Sequence[str | None]) -> list[str]:
    """One bag-of-words document per example; pair words carry their side."""
    documents = []
    for text, pair in zip(texts, pairs):
        if pair is None:
            documents.append(text)
        else:
            documents.append(" ".join([f"a:{w}" for w in text.split()]
                                      + [f"b:{w}" for w in pair.split()]))
    return documents


def _vectorizer():
    # scikit-learn is imported by the functions that use it: it takes seconds to import.
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1,
                           token_pattern=r"(?u)\b[\w:]+\b")


def tfidf_classifier_predictions(train_texts: Sequence[str], train_pairs: Sequence[str | None],
                                 train_labels: Sequence[str], texts: Sequence[str],
                                 pairs: Sequence[str | None]) -> list[str]:
    """Labels a TF-IDF + logistic-regression model trained on the ``train_*`` examples
    predicts for ``texts`` (+ ``pairs``). A training set with one label predicts it."""
    from sklearn.linear_model import LogisticRegression  # heavy import (see _vectorizer)

    if len(set(train_labels)) < 2:
        return [train_labels[0]] * len(texts)
    vectorizer = _vectorizer()
    features = vectorizer.fit_transform(_documents(train_texts, train_pairs))
    model = LogisticRegression(max_iter=2000).fit(features, list(train_labels))
    return list(model.predict(vectorizer.transform(_documents(texts, pairs))))


def tfidf_regressor_predictions(train_texts: Sequence[str], train_pairs: Sequence[str | None],
                                train_scores: Sequence[float], texts: Sequence[str],
                                pairs: Sequence[str | None]) -> list[float]:
    """Scores a TF-IDF + ridge-regression model trained on the ``train_*`` examples predicts
    for ``texts`` (+ ``pairs``)."""
    from sklearn.linear_model import Ridge  # heavy import (see _vectorizer)

    vectorizer = _vectorizer()
    features = vectorizer.fit_transform(_documents(train_texts, train_pairs))
    model = Ridge().fit(features, [float(s) for s in train_scores])
    return [float(s) for s in model.predict(vectorizer.transform(_documents(texts, pairs)))]
