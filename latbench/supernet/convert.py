"""Convert: turn an ordinary torch model (Conv2d, BatchNorm2d, Linear) into a supernet, as
PaddleSlim's `Convert(supernet(kernel_size=[3, 5, 7], expand_ratio=[1, 2, 4])).convert(model)`.

Each Conv2d with a kernel > 1 gets the largest candidate kernel (with OFA's kernel transform
matrices); every weight layer's widths are multiplied by the largest expand ratio, except the input
channels of the first weight layer and the outputs of the last one; BatchNorm2d layers before the
last weight layer widen with them. The model's own forward is unchanged: each converted layer reads
its active `kernel_size` / `expand_ratio` (set by OFA) and its input width from the tensor it gets.

Unlike PaddleSlim, the original weights are kept: they fill the slice of the original widths (and
the centre of the larger kernel, zero around it), so the subnet at expand ratio 1 computes the
original model's function until training changes it.

Width ties (PaddleSlim's shortcut analysis): before converting, the model is traced with torch.fx;
every add (and sub/mul/div) of two tensors ties the layers that set its operands' widths, following
shape-preserving ops (BatchNorm, activations, pooling, dropout, identity, depthwise convs) back to
the conv/linear that sets each width. Tied layers share one expand ratio: the first of a group (in
module order) keeps the `expand_ratio` candidates, the others read its active ratio, so whatever
samples the leader's ratio (OFA) samples the whole group. A group that meets a non-elastic width
(the network input, the last layer's output, a parameter, an op the analysis does not know) runs
at its original width. `Convert.ties` / `model.width_ties` list the groups and
`Convert.fixed_width` / `model.fixed_width` the layers made non-elastic. A model torch.fx cannot
trace gets no ties, with a warning.
"""
from __future__ import annotations

import copy
import operator
import warnings
from typing import Any, Sequence

from ..errors import ConfigError, UsageError, require
from .layers import DynamicBatchNorm2d, DynamicConv2d, DynamicLinear, centre

torch = require("torch", "torch")
nn = torch.nn
F = torch.nn.functional


class SuperLayer:
    """Mixin of converted layers: `candidate_config` (task -> choices) and the `active` choice."""

    candidate_config: dict[str, list]
    active: dict[str, Any]
    last_in: int = 0
    tie: "TieGroup | None" = None

    def _ratio(self) -> float:
        tie = self.tie
        if tie is not None and tie.leader is not self:
            r = tie.leader._ratio()
            own = self.active.get("expand_ratio")
            if own is not None and own != r:
                raise ConfigError(f"layers {tie.names[0]!r} and {tie.name_of(self)!r} are tied (their outputs "
                                  f"meet in an add) but have expand ratios {r} and {own}")
            return r
        cands = self.candidate_config.get("expand_ratio")
        return self.active.get("expand_ratio", max(cands)) if cands else 1.0


class TieGroup:
    """Layers whose output widths meet in an add: they share the leader's (first's) expand ratio."""

    def __init__(self, names: Sequence[str], leader: "nn.Module"):
        self.names = list(names)
        self.leader = leader  # a plain attribute (not a submodule): followers read its active ratio

    @staticmethod
    def name_of(m: Any) -> str:
        return getattr(m, "tie_name", "?")

    def __repr__(self) -> str:
        return f"TieGroup({self.names})"


class SuperConv2d(nn.Module, SuperLayer):
    """A converted Conv2d: elastic kernel and width."""

    def __init__(self, conv: "nn.Conv2d", kernel_size: Sequence[int] | None, expand: Sequence[float] | None,
                 first: bool, last: bool, fixed: bool = False):
        super().__init__()
        k0 = conv.kernel_size[0]
        if conv.kernel_size[0] != conv.kernel_size[1] or k0 % 2 == 0:
            raise UsageError(f"Convert: only square odd kernels can be elastic, got {conv.kernel_size}")
        self.depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
        if conv.groups != 1 and not self.depthwise:
            raise UsageError(f"Convert: grouped convs (groups={conv.groups}) are not supported")
        self.candidate_config = {}
        ks = [k0]
        if kernel_size and k0 != 1:
            ks = sorted(set(int(k) for k in kernel_size))
            self.candidate_config["kernel_size"] = ks
        e = max(expand) if expand else 1
        self.base_in, self.base_out = conv.in_channels, conv.out_channels
        self.first, self.last = first, last or fixed  # fixed: tied to a non-elastic width, original out
        last = self.last
        self.scale_in = 1 if first else e
        self.scale_out = 1 if last else e
        if expand and not last and not self.depthwise:
            self.candidate_config["expand_ratio"] = sorted(expand)
        max_in = int(round(self.base_in * self.scale_in))
        max_out = max_in if self.depthwise else int(round(self.base_out * self.scale_out))
        self.conv = DynamicConv2d(max_in, max_out, ks, depthwise=self.depthwise, bias=conv.bias is not None,
                                  transform=len(ks) > 1)
        self.stride, self.dilation = conv.stride, conv.dilation
        self.padding = conv.padding
        self.active = {}
        with torch.no_grad():
            s = centre(self.conv.max_k, k0)
            self.conv.weight[:conv.out_channels, :conv.weight.shape[1]] = 0
            self.conv.weight[:conv.out_channels, :conv.weight.shape[1], s, s] = conv.weight
            if conv.bias is not None:
                self.conv.bias[:conv.out_channels] = conv.bias

    def out_width(self, cin: int) -> int:
        if self.depthwise:
            return cin
        return self.base_out if self.last else max(1, int(round(self.base_out * self._ratio())))

    def forward(self, x):
        k = self.active.get("kernel_size", self.conv.max_k)
        cin = x.shape[1]
        self.last_in = cin
        cout = self.out_width(cin)
        pad = (k - 1) // 2 * self.dilation[0] if "kernel_size" in self.candidate_config else self.padding
        return F.conv2d(x, self.conv.active_weight(cin, cout, k), self.conv.active_bias(cout), self.stride, pad,
                        self.dilation, cin if self.depthwise else 1)

    def to_static(self) -> "nn.Conv2d":
        """A plain Conv2d of the active sizes holding the active (transformed) weights."""
        cin = self.last_in
        cout, k = self.out_width(cin), self.active.get("kernel_size", self.conv.max_k)
        pad = (k - 1) // 2 * self.dilation[0] if "kernel_size" in self.candidate_config else self.padding
        m = nn.Conv2d(cin, cout, k, self.stride, pad, self.dilation, cin if self.depthwise else 1,
                      bias=self.conv.bias is not None)
        with torch.no_grad():
            m.weight.copy_(self.conv.active_weight(cin, cout, k))
            if m.bias is not None:
                m.bias.copy_(self.conv.active_bias(cout))
        return m


class SuperBatchNorm2d(DynamicBatchNorm2d, SuperLayer):
    """A converted BatchNorm2d: normalises the first channels it is given."""

    def __init__(self, bn: "nn.BatchNorm2d", scale: float):
        super().__init__(int(round(bn.num_features * scale)), bn.eps, bn.momentum if bn.momentum is not None else 0.1)
        self.candidate_config, self.active = {}, {}
        with torch.no_grad():
            n = bn.num_features
            if bn.weight is not None:
                self.weight[:n] = bn.weight
                self.bias[:n] = bn.bias
            if bn.running_mean is not None:
                self.running_mean[:n] = bn.running_mean
                self.running_var[:n] = bn.running_var

    def forward(self, x):
        self.last_in = x.shape[1]
        return super().forward(x)

    def to_static(self) -> "nn.BatchNorm2d":
        c = self.last_in
        m = nn.BatchNorm2d(c, self.eps, self.momentum)
        with torch.no_grad():
            m.weight.copy_(self.weight[:c])
            m.bias.copy_(self.bias[:c])
            m.running_mean.copy_(self.running_mean[:c])
            m.running_var.copy_(self.running_var[:c])
        return m


class SuperLinear(nn.Module, SuperLayer):
    """A converted Linear: elastic in (from the input) and out (by expand ratio) features."""

    def __init__(self, fc: "nn.Linear", expand: Sequence[float] | None, first: bool, last: bool,
                 fixed: bool = False):
        super().__init__()
        e = max(expand) if expand else 1
        last = last or fixed
        self.base_out, self.last = fc.out_features, last
        self.candidate_config = {"expand_ratio": sorted(expand)} if expand and not last else {}
        self.fc = DynamicLinear(int(round(fc.in_features * (1 if first else e))),
                                int(round(fc.out_features * (1 if last else e))), fc.bias is not None)
        self.active = {}
        with torch.no_grad():
            self.fc.weight[:fc.out_features, :fc.in_features] = fc.weight
            if fc.bias is not None:
                self.fc.bias[:fc.out_features] = fc.bias

    def out_width(self) -> int:
        return self.base_out if self.last else max(1, int(round(self.base_out * self._ratio())))

    def forward(self, x):
        self.last_in = x.shape[-1]
        return self.fc(x, self.out_width())

    def to_static(self) -> "nn.Linear":
        fin, fout = self.last_in, self.out_width()
        m = nn.Linear(fin, fout, bias=self.fc.bias is not None)
        with torch.no_grad():
            m.weight.copy_(self.fc.active_weight(fin, fout))
            if m.bias is not None:
                m.bias.copy_(self.fc.active_bias(fout))
        return m


class supernet:  # noqa: N801 - PaddleSlim's name
    """The search space of a conversion: `supernet(kernel_size=[3, 5, 7], expand_ratio=[1, 2, 4])`;
    also a context manager yielding its Convert, as in PaddleSlim."""

    def __init__(self, kernel_size: Sequence[int] | None = None, expand_ratio: Sequence[float] | None = None,
                 **unsupported: Any):
        if unsupported:
            raise UsageError(f"supernet(): unsupported option(s) {', '.join(sorted(unsupported))} "
                             "(kernel_size and expand_ratio are)")
        self.kernel_size = list(kernel_size) if kernel_size else None
        self.expand_ratio = list(expand_ratio) if expand_ratio else None
        if self.kernel_size and any(int(k) % 2 == 0 or int(k) < 1 for k in self.kernel_size):
            raise UsageError(f"supernet(): kernel sizes must be odd, got {self.kernel_size}")
        if self.expand_ratio and any(e <= 0 for e in self.expand_ratio):
            raise UsageError(f"supernet(): expand ratios must be > 0, got {self.expand_ratio}")
        self.expand = max(self.expand_ratio) if self.expand_ratio else None

    def __enter__(self) -> "Convert":
        return Convert(self)

    def __exit__(self, *exc) -> None:
        return None


def _set(root: "nn.Module", name: str, module: "nn.Module") -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


_INPUT = "<input>"
_TIE_OPS = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
            operator.truediv, operator.itruediv}
_TIE_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_SAME_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min",
                 "clamp_max", "clone", "contiguous", "float", "half", "to", "type_as", "detach", "neg",
                 "abs", "exp", "sqrt", "pow", "hardtanh", "hardtanh_"}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_UNION = object()  # marks an op that ties its tensor operands


def _same_functions() -> set:
    """Functions whose output has their (first) input's channel width."""
    names = ["relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "hardsigmoid", "hardswish", "tanh", "leaky_relu",
             "elu", "selu", "celu", "mish", "softplus", "hardtanh", "dropout", "dropout2d", "avg_pool2d",
             "max_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "interpolate", "softmax", "log_softmax"]
    out = {operator.neg, operator.pos}
    for mod in (F, torch):
        for n in names:
            if hasattr(mod, n):
                out.add(getattr(mod, n))
    return out


def _tie_functions() -> set:
    return _TIE_OPS | {torch.add, torch.sub, torch.mul, torch.div}


def _reduce_keeps_channels(node) -> bool:
    """`x.mean((2, 3))`-like: reduced dims given and none of them is dim 1."""
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if dims is None:
        return False
    dims = [dims] if isinstance(dims, int) else list(dims)
    return all(isinstance(d, int) and d >= 2 for d in dims)


def find_width_ties(network: "nn.Module", elastic: set, fixed_out: set) -> tuple[list[tuple], list[str], list[str]]:
    """(groups of >= 2 elastic layers tied by adds, layers tied to a non-elastic width, warnings).
    `elastic`: names of the layers whose output width is elastic; `fixed_out`: weight layers whose
    output width is not (the last one). Raises whatever torch.fx raises on an untraceable model."""
    import torch.fx as fx
    from scipy.cluster.hierarchy import DisjointSet

    gm = fx.symbolic_trace(network)
    modules = dict(network.named_modules())
    same_fns, tie_fns = _same_functions(), _tie_functions()
    passthrough = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Upsample,
                   nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    act_mod = nn.modules.activation
    uf = DisjointSet()  # the width sources that meet in an add
    src: dict = {}  # node -> width source: a layer name, _INPUT, "<op:...>" or None (not a tensor width)
    opaque: dict[str, str] = {}

    def of(a):
        return src.get(a) if isinstance(a, fx.Node) else None

    def unknown(node, what: str):
        key = f"<op:{node.name}>"
        opaque[key] = what
        return key

    for node in gm.graph.nodes:
        op, tgt, args = node.op, node.target, node.args
        kind = None  # None: unknown; "same": width of args[0]; _UNION: ties tensor operands
        if op == "placeholder":
            src[node] = _INPUT
            continue
        if op == "get_attr":
            src[node] = f"<param:{tgt}>"
            continue
        if op == "output":
            continue
        if (op == "call_method" and tgt in ("size", "dim")) or (op == "call_function" and tgt is getattr):
            src[node] = None  # sizes, shapes: not a tensor width
            continue
        if op == "call_module":
            m = modules[tgt]
            if tgt in elastic:
                src[node] = tgt
                continue
            if tgt in fixed_out:
                src[node] = _INPUT  # a non-elastic width
                continue
            if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels:
                kind = "same"  # depthwise: follows its input
            elif isinstance(m, passthrough) or (type(m).__module__ == act_mod.__name__
                                                and not isinstance(m, nn.MultiheadAttention)):
                kind = "same"
        elif op == "call_function":
            if tgt in tie_fns:
                kind = _UNION
            elif tgt in same_fns:
                kind = "same"
        elif op == "call_method":
            if tgt in _TIE_METHODS:
                kind = _UNION
            elif tgt in _SAME_METHODS or (tgt in _REDUCE_METHODS and _reduce_keeps_channels(node)):
                kind = "same"
        if kind == "same":
            src[node] = of(args[0]) if args else None
        elif kind is _UNION:
            operands = [of(a) for a in list(args[:2]) + [node.kwargs.get("other")]]
            operands = [o for o in operands if o is not None]
            for o in operands[1:]:
                uf.add(operands[0])
                uf.add(o)
                uf.merge(operands[0], o)
            src[node] = operands[0] if operands else None
        else:
            tensor_in = any(isinstance(a, fx.Node) and of(a) is not None for a in node.all_input_nodes)
            src[node] = unknown(node, f"{op} {getattr(tgt, '__name__', tgt)}") if tensor_in else None
    order = {n: i for i, n in enumerate(modules)}
    ties, fixed, notes = [], [], []
    for members in uf.subsets():
        layers = sorted((k for k in members if k in elastic), key=order.__getitem__)
        if not layers:
            continue
        others = [k for k in members if k not in elastic]
        if others:
            fixed += layers
            unk = [opaque[k] for k in others if k in opaque]
            if unk:
                notes.append(f"layers {', '.join(layers)} meet the output of {', '.join(sorted(set(unk)))} "
                             "(an op whose width the tie analysis cannot follow) in an add; kept at their "
                             "original width")
        elif len(layers) > 1:
            ties.append(tuple(layers))
    ties.sort(key=lambda g: order[g[0]])
    return ties, sorted(fixed, key=order.__getitem__), notes


class Convert:
    """Replace a model's Conv2d / BatchNorm2d / Linear layers (in place) by elastic ones; layers
    whose outputs meet in an add are tied (`ties`: groups sharing one expand ratio; `fixed_width`:
    layers tied to a non-elastic width, kept at their original width)."""

    def __init__(self, context: supernet):
        self.context = context
        self.ties: list[tuple[str, ...]] = []
        self.fixed_width: list[str] = []

    def convert(self, network: "nn.Module | list") -> "nn.Module | list":
        """The converted network (the same object; a list of layers is converted item by item)."""
        if isinstance(network, list):
            seq = nn.Sequential(*network)
            self.convert(seq)
            return list(seq)
        layers = [(n, m) for n, m in network.named_modules() if n and not list(m.children())]
        weight_idx = [i for i, (_, m) in enumerate(layers) if isinstance(m, (nn.Conv2d, nn.Linear))]
        if not weight_idx:
            raise UsageError("Convert: the model has no Conv2d or Linear layer")
        first, last = weight_idx[0], weight_idx[-1]
        ks, er = self.context.kernel_size, self.context.expand_ratio
        self.ties, self.fixed_width = [], []
        if er:
            elastic, fixed_out = set(), set()
            for i, (name, m) in enumerate(layers):
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    dw = isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
                    if i == last:
                        fixed_out.add(name)
                    elif not dw:
                        elastic.add(name)
            try:
                self.ties, self.fixed_width, notes = find_width_ties(network, elastic, fixed_out)
            except Exception as exc:  # noqa: BLE001 - any tracing failure means: no analysis
                warnings.warn(f"Convert: torch.fx cannot trace {type(network).__name__} ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); no width ties: layers whose "
                              "outputs meet in an add must be given equal expand ratios", stacklevel=2)
                notes = []
            for note in notes:
                warnings.warn(f"Convert: {note}", stacklevel=2)
        fixed = set(self.fixed_width)
        for i, (name, m) in enumerate(layers):
            if isinstance(m, nn.Conv2d):
                _set(network, name, SuperConv2d(m, ks, er, i == first, i == last, name in fixed))
            elif isinstance(m, nn.Linear):
                _set(network, name, SuperLinear(m, er, i == first, i == last, name in fixed))
            elif isinstance(m, nn.BatchNorm2d):
                _set(network, name, SuperBatchNorm2d(m, self.context.expand if er and i < last else 1))
        for names in self.ties:
            members = [network.get_submodule(n) for n in names]
            group = TieGroup(names, members[0])
            for n, m in zip(names, members):
                m.tie, m.tie_name = group, n
                if m is not members[0]:
                    m.candidate_config.pop("expand_ratio", None)
        network.width_ties = list(self.ties)
        network.fixed_width = list(self.fixed_width)
        return network


def tied_net_config(model: "nn.Module", config: dict) -> dict:
    """Check a PaddleSlim-form per-layer config (`{layer: {"expand_ratio": r, ...}}`) against the
    Convert-ed model's ties and return it with each group's ratio on its leader (the layer that
    carries the group's `expand_ratio` dimension). Tied layers given different ratios, or a
    non-elastic (fixed-width) layer given a ratio other than 1, are a ConfigError naming them."""
    out = {k: dict(v) for k, v in config.items()}
    for names in getattr(model, "width_ties", []):
        given = [(n, config[n]["expand_ratio"]) for n in names
                 if isinstance(config.get(n), dict) and "expand_ratio" in config[n]]
        for n, r in given[1:]:
            if r != given[0][1]:
                raise ConfigError(f"layers {given[0][0]!r} and {n!r} are tied (their outputs meet in an add) "
                                  f"but the config gives them expand ratios {given[0][1]} and {r}")
        if given:
            out.setdefault(names[0], {})["expand_ratio"] = given[0][1]
            for n in names[1:]:
                if n in out:
                    out[n].pop("expand_ratio", None)
    for n in getattr(model, "fixed_width", []):
        r = config.get(n, {}).get("expand_ratio") if isinstance(config.get(n), dict) else None
        if r is not None and r != 1:
            raise ConfigError(f"layer {n!r} meets a non-elastic width in an add and keeps its original width; "
                              f"the config gives it expand ratio {r}")
        if n in out:
            out[n].pop("expand_ratio", None)
    return out


def set_converted_config(model: "nn.Module", config: dict) -> None:
    """Activate a per-layer config (`{layer: {"kernel_size": k, "expand_ratio": r}}`; layers or keys
    left out take their largest) on a Convert-ed model, checked against its ties (ConfigError)."""
    config = tied_net_config(model, config)
    for name, m in model.named_modules():
        if isinstance(m, SuperLayer):
            m.active = {}
            for key, cands in m.candidate_config.items():
                v = config.get(name, {}).get(key, max(cands))
                if v not in cands:
                    raise ConfigError(f"layer {name!r}: {key} {v} is not one of {cands}")
                m.active[key] = v


def export_converted(model: "nn.Module", dummy, origin_model: "nn.Module | None" = None,
                     load_weights: bool = True) -> "nn.Module":
    """A copy of the Convert-ed `model` (or of `origin_model`, the unconverted architecture) with
    plain layers of the active subnet's sizes; one forward on `dummy` records the input widths."""
    was = model.training
    model.eval()
    with torch.no_grad():
        model(dummy)
    model.train(was)
    target = copy.deepcopy(origin_model if origin_model is not None else model)
    for name, m in model.named_modules():
        if isinstance(m, SuperLayer):
            static = m.to_static()
            if not load_weights:
                static.reset_parameters()
            _set(target, name, static)
    return target.eval()


__all__ = ["Convert", "supernet", "SuperLayer", "TieGroup", "find_width_ties", "tied_net_config",
           "set_converted_config", "SuperConv2d", "SuperBatchNorm2d", "SuperLinear", "export_converted"]
