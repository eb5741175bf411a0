//! switchyard: the edge proxy (built in the data-plane issue).
