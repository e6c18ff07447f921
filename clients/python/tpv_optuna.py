"""tpv_optuna: tpvd inside an Optuna study (label-free model selection of a hyperparameter search).

    import optuna, tpv_optuna
    from tpv_client import Client

    models = {}                                   # the objective keeps each trial's model
    def objective(trial):
        net, train_loss = train(trial.suggest_int("width", 8, 128))
        models[trial.number] = net
        trial.set_user_attr("train_loss", train_loss)
        return val_loss_or_anything(net)

    cb = tpv_optuna.TPVCallback(Client(url), study_id, export=lambda t: models.pop(t.number),
                                input_shape=[10])
    study = optuna.create_study()
    study.optimize(cb.wrap(objective), n_trials=20)        # TPV as trial.user_attrs["tpv"]
    # or: study.optimize(objective, n_trials=20, callbacks=[cb])
    best = tpv_optuna.best_trial(study, max_train_loss=0.1)

After each finished trial the callback exports the trial's model through `export(trial)` (an
nn.Sequential, exported with tpv_export; or a path: a folder holding spec.json and
weights.safetensors, or an .onnx file), submits it to the tpvd study with the trial's params and
values as metadata (train_loss from the trial's user attribute `train_loss_attr`), waits for its
job and writes the TPV back.  Optuna refuses user attributes on a trial once it is finished, and
callbacks only ever see finished trials, so:

- through `cb.wrap(objective)` the same steps run at the end of the trial, and the TPV lands in
  the trial's own user attribute `attr` ("tpv");
- as `callbacks=[cb]` the TPV lands in the study's user attribute "tpv:<trial number>" (the one
  place Optuna lets a callback write).

`best_trial(study)` reads either.  With a client and study id it asks tpvd's ranking instead
(underfit candidates excluded by max_train_loss there) and maps the first item back to its trial.
"""

import math
import os
import tempfile

import optuna

from tpv_client import TPVError

_COMPLETE = optuna.trial.TrialState.COMPLETE


def _json_number(v):
    """A finite float or None: metadata is JSON, which has no NaN or infinity."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _json_param(v):
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    f = _json_number(v)
    return f if f is not None else str(v)


class TPVCallback:
    """Exports, submits and scores each finished trial's model (see the module docstring).

    client: tpv_client.Client; study_id: the tpvd study (its fit/probe inputs set).
    export(trial) -> nn.Sequential | path; input_shape: for nn.Sequential models.
    by / split: the score written back (default the study's rank_by, on probe).
    wait: False submits without waiting (nothing is written back; see scores())."""

    def __init__(self, client, study_id, export, input_shape=None, train_loss_attr="train_loss",
                 attr="tpv", by=None, split="probe", timeout=600.0, wait=True,
                 name="trial-{number}", metadata=None, workdir=None):
        self.client = client
        self.study_id = study_id
        self.export = export
        self.input_shape = input_shape
        self.train_loss_attr = train_loss_attr
        self.attr = attr
        self.by = by or client.get_study(study_id)["rank_by"]
        self.split = split
        self.timeout = timeout
        self.wait = wait
        self.name = name
        self.metadata = dict(metadata or {})
        self.workdir = workdir or tempfile.mkdtemp(prefix="tpv-optuna-")
        self.submitted = {}  # trial number -> {"candidate_id", "job_id"}

    # -- steps ---------------------------------------------------------------------------

    def _model_files(self, trial, model):
        """(kind, files) of what export returned: ("spec", (spec, weights)) or ("onnx", path)."""
        if isinstance(model, (str, os.PathLike)):
            path = os.fspath(model)
            if os.path.isdir(path):
                return "spec", (os.path.join(path, "spec.json"),
                                os.path.join(path, "weights.safetensors"))
            if path.endswith(".onnx"):
                return "onnx", path
            raise ValueError("export returned %r: neither a folder with spec.json and "
                             "weights.safetensors nor an .onnx file" % path)
        import torch  # only needed for modules
        import tpv_export
        if not isinstance(model, torch.nn.Module):
            raise TypeError("export must return an nn.Module or a path, not %s"
                            % type(model).__name__)
        if self.input_shape is None:
            raise ValueError("TPVCallback needs input_shape to export an nn.Module")
        out = os.path.join(self.workdir, "trial-%d" % trial.number)
        return "spec", tpv_export.export_sequential(model, out, self.input_shape)

    def _metadata(self, study, trial, values):
        meta = dict(self.metadata)
        meta["optuna_study"] = study.study_name if study is not None else None
        meta["optuna_trial"] = trial.number
        meta["params"] = {k: _json_param(v) for k, v in trial.params.items()}
        if values is not None:
            vals = values if isinstance(values, (list, tuple)) else [values]
            meta["values"] = [_json_number(v) for v in vals]
        train = _json_number(trial.user_attrs.get(self.train_loss_attr))
        if train is not None:
            meta["train_loss"] = train
        return meta

    def submit(self, study, trial, values=None):
        """Exports and submits the trial's model; returns tpvd's {"candidate", "job"}."""
        kind, files = self._model_files(trial, self.export(trial))
        name = self.name.format(number=trial.number)
        meta = self._metadata(study, trial, values)
        # The trial number makes a retried submission (a dropped connection) the same request.
        key = "optuna-%s-%s-%d" % (meta["optuna_study"], self.study_id, trial.number)
        if kind == "onnx":
            acc = self.client.add_candidate(self.study_id, name, onnx=files, metadata=meta,
                                            idempotency_key=key)
        else:
            acc = self.client.add_candidate(self.study_id, name, spec=files[0],
                                            weights=files[1], metadata=meta,
                                            idempotency_key=key)
        self.submitted[trial.number] = {"candidate_id": acc["candidate"]["id"],
                                        "job_id": acc["job"]["id"]}
        return acc

    def tpv(self, number):
        """Waits for the trial's job; its TPV (by, split), or raises TPVError if it failed."""
        sub = self.submitted[number]
        job = self.client.wait_job(sub["job_id"], timeout=self.timeout)
        if job["state"] != "succeeded":
            err = job.get("error") or {}
            raise TPVError(0, err.get("code", job["state"]),
                           "trial %d: job %s %s: %s" % (number, job["id"], job["state"],
                                                        err.get("message", "")))
        cand = self.client.get_candidate(self.study_id, sub["candidate_id"])
        for s in cand.get("scores", []):
            if s["noise"] == self.by and s["split"] == self.split:
                return s["value"]
        raise TPVError(0, "not_found", "trial %d: no %s score on %s" % (number, self.by,
                                                                      self.split))

    # -- Optuna entry points -------------------------------------------------------------

    def __call__(self, study, trial):
        """An Optuna callback: for a finished (COMPLETE) trial, submit and write the TPV as
        the study's user attribute "<attr>:<number>" (the trial itself is read-only by now)."""
        if trial.state != _COMPLETE:
            return None
        self.submit(study, trial, trial.values)
        if not self.wait:
            return None
        value = self.tpv(trial.number)
        study.set_user_attr("%s:%d" % (self.attr, trial.number), value)
        return value

    def wrap(self, objective):
        """The objective, followed by export, submission and scoring inside the trial, so that
        the TPV becomes the trial's own user attribute `attr`."""
        def run(trial):
            values = objective(trial)
            self.submit(trial.study, trial, values)
            if self.wait:
                trial.set_user_attr(self.attr, self.tpv(trial.number))
            return values
        run.__name__ = getattr(objective, "__name__", "objective")
        return run


def trial_tpv(study, trial, attr="tpv"):
    """The TPV written back for a trial (either way), or None."""
    v = trial.user_attrs.get(attr)
    if v is None:
        v = study.user_attrs.get("%s:%d" % (attr, trial.number))
    return v


def _median_train_loss(trials, train_loss_attr):
    """The threshold of max_train_loss=auto, as tpvd computes it: the median of the train losses
    reported (the mean of the middle two for an even count); None when no trial reports one."""
    losses = sorted(x for x in (_json_number(t.user_attrs.get(train_loss_attr)) for t in trials)
                    if x is not None)
    if not losses:
        return None
    mid = len(losses) // 2
    return losses[mid] if len(losses) % 2 else 0.5 * (losses[mid - 1] + losses[mid])


def best_trial(study, attr="tpv", max_train_loss=None, train_loss_attr="train_loss",
               client=None, study_id=None, by=None, split=None):
    """The label-free best trial: the lowest TPV among complete trials, leaving out those whose
    train loss is above max_train_loss (underfit: low TPV there means too simple a model).
    max_train_loss="auto" is tpvd's rule: the median train loss of the trials that report one.

    With client and study_id the order is tpvd's ranking of that study (by, split,
    max_train_loss passed on), mapped back through metadata.optuna_trial.  None when no trial
    qualifies."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False, states=(_COMPLETE,))}
    if client is not None and study_id is not None:
        rk = client.ranking(study_id, by=by, split=split, max_train_loss=max_train_loss)
        for item in rk["items"]:
            meta = item.get("metadata") or {}
            if meta.get("optuna_study") == study.study_name and meta.get("optuna_trial") in trials:
                return trials[meta["optuna_trial"]]
        return None
    if max_train_loss == "auto":
        max_train_loss = _median_train_loss(trials.values(), train_loss_attr)
    best, best_v = None, None
    for t in trials.values():
        v = trial_tpv(study, t, attr)
        if v is None:
            continue
        train = _json_number(t.user_attrs.get(train_loss_attr))
        if max_train_loss is not None and train is not None and train > max_train_loss:
            continue
        if best_v is None or v < best_v:
            best, best_v = t, v
    return best
