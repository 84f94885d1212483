"""Which images a run may learn from and which it is tested on out of domain.

Pathology and cytology models meet images from centres, scanners and tumour types they were
never trained on; measuring that needs test domains whose images never reach training or
validation (not even for model selection). The split of the training domains into train / val /
in-domain test is the ordinary one (:mod:`.splits`), applied to their images only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from cytotune.data.dataset import DataError, LabelledImages


@dataclass(frozen=True)
class DomainPools:
    """Indices into the data set: images of the training domains, and of the test domains."""

    train_domains: tuple[str, ...]
    test_domains: tuple[str, ...]
    in_domain: np.ndarray  # int64, sorted: split into train / val / in-domain test
    out_of_domain: np.ndarray  # int64, sorted: tested only


def domain_names(data: LabelledImages) -> list[str]:
    """The data set's domains, sorted; an error naming the data set when it has none."""
    if data.domains is None:
        raise DataError(f"{data.name}: the data set has no domains (a CSV manifest needs a "
                        f"'domain' column to use train/test domains or leave-one-domain-out)")
    return sorted(set(data.domains.tolist()))


def domain_pools(data: LabelledImages, train_domains: Optional[Sequence[str]],
                 test_domains: Optional[Sequence[str]]) -> Optional[DomainPools]:
    """Pools for ``train_domains`` / ``test_domains``; None when neither is given.

    Test domains default to every domain not trained on, training domains to every domain not
    tested on. Unknown names, a domain on both sides, or an empty side are errors.
    """
    if not train_domains and not test_domains:
        return None
    known = domain_names(data)
    for option, given in (("train_domains", train_domains), ("test_domains", test_domains)):
        unknown = sorted(set(given or ()) - set(known))
        if unknown:
            raise DataError(f"{data.name}: {option} names unknown domain(s) {unknown}; the "
                            f"data set's domains are {known}")
    train = list(train_domains) if train_domains else [d for d in known if d not in set(test_domains)]
    test = list(test_domains) if test_domains else [d for d in known if d not in set(train)]
    both = sorted(set(train) & set(test))
    if both:
        raise DataError(f"{data.name}: domain(s) {both} are in both train_domains and test_domains")
    if not train:
        raise DataError(f"{data.name}: no training domain left (domains {known}, test domains {test})")
    if not test:
        raise DataError(f"{data.name}: no test domain left (domains {known}, train domains {train})")
    in_domain = np.flatnonzero(np.isin(data.domains, train)).astype(np.int64)
    out_of_domain = np.flatnonzero(np.isin(data.domains, test)).astype(np.int64)
    return DomainPools(tuple(train), tuple(test), in_domain, out_of_domain)


def leave_one_domain_out(data: LabelledImages) -> list[tuple[str, DomainPools]]:
    """One (held-out domain, pools) per domain: trained on all others, tested on it."""
    known = domain_names(data)
    if len(known) < 2:
        raise DataError(f"{data.name}: leave-one-domain-out needs at least two domains, found "
                        f"{known}")
    pools = [(d, domain_pools(data, None, [d])) for d in known]
    return [(d, p) for d, p in pools if p is not None]
