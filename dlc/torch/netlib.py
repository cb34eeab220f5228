# ------------------------------------------------------------------------------------------------
# Helpers of a network dlc generated (`dlc export --format pytorch`); the same in every such file.
# dlc checkpoints are NumPy .npz archives; these read and write them with the standard library and
# torch alone, so the file needs neither NumPy nor dlc.
# ------------------------------------------------------------------------------------------------

def lrn(x, size: int, before: int, alpha: float, beta: float, k: float):
    """ONNX LRN across channels: x / (k + alpha/size * sum of x^2 over the window)^beta, the window
    holding `before` channels before and size-1-before after."""
    squares = F.pad((x * x).unsqueeze(1), (0, 0, 0, 0, before, size - 1 - before))
    return x / (k + alpha * F.avg_pool3d(squares, (size, 1, 1), stride=1).squeeze(1)) ** beta


def product(*xs):
    """mul: the elementwise product of the inputs; a vector of features (N, C) is repeated over the
    positions of an image (N, C, 1, 1) or a sequence (N, 1, C)."""
    rank = max(x.dim() for x in xs)
    out = None
    for x in xs:
        if x.dim() < rank:
            x = x[:, :, None, None] if rank == 4 else x[:, None, :]
        out = x if out is None else out * x
    return out


def extremum(pick, *xs):
    """maximum or minimum of two or more tensors (torch.maximum takes two)."""
    out = xs[0]
    for x in xs[1:]:
        out = pick(out, x)
    return out


def last_states(h):
    """(directions, N, H) final states -> (N, directions*H), forward direction first."""
    return h.transpose(0, 1).flatten(1)


class Mixture(nn.Module):
    """experts: a mixture's join, as dlc's NumPy kernel computes it. Each step keeps its `top` largest
    router logits (ties to the lower expert index: a stable sort, since torch.topk leaves ties in no
    set order), takes their softmax and sums the experts' outputs so weighted, the others by zero.
    In training with balance > 0, `loss` is the batch's load-balancing loss, alpha·E·Σ f_i·P_i (f_i the
    fraction of steps with expert i among their top K, a count; P_i the mean softmax over all E), for
    the training loss to add: balance_loss(net) sums them."""

    def __init__(self, top: int, balance: float = 0.0):
        super().__init__()
        self.top, self.balance, self.loss = top, balance, None

    def forward(self, logits, *outs):
        index = torch.sort(logits, dim=-1, descending=True, stable=True).indices[..., :self.top]
        gate = torch.zeros_like(logits).scatter(-1, index, torch.softmax(torch.gather(logits, -1, index), dim=-1))
        self.loss = None
        if self.training and self.balance > 0:
            e = logits.shape[-1]
            z = logits.reshape(-1, e)
            f = torch.bincount(index.reshape(-1), minlength=e).to(z.dtype) / len(z)
            self.loss = self.balance * e * (f * torch.softmax(z, -1).mean(0)).sum()
        return (torch.stack(outs, -1) * gate.unsqueeze(-2)).sum(-1)


def balance_loss(net: nn.Module):
    """The load-balancing losses of the net's mixtures in its last training forward pass (0: none)."""
    return sum(m.loss for m in net.modules() if isinstance(m, Mixture) and m.loss is not None)


def rotary_tables(steps: int, head_dim: int, theta: float, dtype, device):
    """(cos, sin), each (steps, head_dim), of Hugging Face Llama's rotate-half rope at positions 0..steps-1:
    feature i pairs with i + head_dim/2 and turns by position·theta^(-2i/head_dim); sin's first half is
    negated, so that rotate_half(x)·sin is swap_halves(x)·sin. Angles in float64, as dlc's NumPy engine."""
    inverse = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(steps, dtype=torch.float64)[:, None] * inverse
    cos, sin = angles.cos(), angles.sin()
    return (torch.cat((cos, cos), -1).to(device, dtype), torch.cat((-sin, sin), -1).to(device, dtype))


def sinusoids(steps: int, dim: int, like):
    """posembed fixed: tensor2tensor's and Whisper's positions 0..steps-1, sin(p·w_i) then cos(p·w_i),
    w_i = 10000^(-i/(dim/2 - 1)), in the dtype and on the device of `like`. Angles in float64."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000) / (half - 1) * torch.arange(half, dtype=torch.float64))
    angles = torch.arange(steps, dtype=torch.float64)[:, None] * frequencies
    return torch.cat((angles.sin(), angles.cos()), 1).to(like.device, like.dtype)


def rotate(x, cos, sin):
    """x·cos + rotate_half(x)·sin over the last axis, with sin as rotary_tables gives it."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((x[..., half:], x[..., :half]), -1) * sin


class SelfAttention(nn.Module):
    """attention: multi-head self-attention, softmax(Q Kᵀ / sqrt(head_dim)) V per head, the heads joined
    and projected by Wo. dlc's tensors under dlc's names: Wq, Wk, Wv, Wo (out, in) as nn.Linear's
    weight, biases bq, bk, bv, bo (no bk with keybias=False, as Whisper). `causal` hides later steps from
    each step, and `window` the steps `window` or more back; `kv` key/value heads each serve heads/kv
    query heads in a row; `rope` (the base theta, 0 for none) turns queries and keys by their positions;
    `dropout` acts on the attention weights in training. `source` (the width of another sequence, forward's second tensor) makes it
    cross-attention: keys and values from that sequence; `masked`: forward's last tensor is a padding
    mask (N, S), 1 for a key to keep and 0 for padding, whose scores become the lowest float."""

    def __init__(self, dim: int, heads: int, causal: bool = False, bias: bool = True, dropout: float = 0.0,
                 kv: int | None = None, rope: float = 0.0, window: int | None = None, source: int | None = None,
                 masked: bool = False, keybias: bool = True):
        super().__init__()
        self.heads, self.causal, self.dropout = heads, causal, dropout
        self.kv, self.rope, self.window = kv or heads, rope, window
        self.cross, self.masked = source is not None, masked
        sizes = {"q": dim, "k": self.kv * (dim // heads), "v": self.kv * (dim // heads), "o": dim}
        for p, size in sizes.items():
            shape = (size, dim) if p in "qo" or source is None else (size, source)
            self.register_parameter("W" + p, nn.Parameter(nn.init.xavier_uniform_(torch.empty(shape))))
            has = bias and (keybias or p != "k")
            self.register_parameter("b" + p, nn.Parameter(torch.zeros(shape[0])) if has else None)

    def forward(self, x, *read):
        n, t, d = x.shape
        dh = d // self.heads
        source = read[0] if self.cross else x
        s = source.shape[1]
        q = F.linear(x, self.Wq, self.bq).view(n, t, self.heads, dh).transpose(1, 2)
        k, v = (F.linear(source, w, b).view(n, s, self.kv, dh).transpose(1, 2)
                for w, b in ((self.Wk, self.bk), (self.Wv, self.bv)))
        if self.rope:
            cos, sin = rotary_tables(t, dh, self.rope, x.dtype, x.device)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if self.kv < self.heads:  # scaled_dot_product_attention groups heads itself only from torch 2.5
            k, v = (z.repeat_interleave(self.heads // self.kv, dim=1) for z in (k, v))
        seen = None
        if self.window is not None:
            steps = torch.arange(t, device=x.device)
            back = steps[:, None] - steps[None, :]
            seen = (back >= 0) & (back < self.window)  # Mistral: itself and the window-1 steps before
        if self.masked:
            kept = (read[-1] != 0)[:, None, None, :]  # (N, 1, 1, S): every head and query
            if self.causal and seen is None:
                seen = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            kept = kept if seen is None else kept & seen
            # a float mask: padding at the lowest float, as Hugging Face's BERT, so that a query whose
            # keys are all padding averages them (a boolean one would give it NaN)
            seen = torch.zeros(kept.shape, dtype=x.dtype, device=x.device).masked_fill(~kept, torch.finfo(x.dtype).min)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=seen,
                                           dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=self.causal and seen is None)
        return F.linear(o.transpose(1, 2).reshape(n, t, d), self.Wo, self.bo)


def window_order(grid, window, shift):
    """The grid's steps in window order, the grid rolled up and left by the shift first (torch.roll by
    -shift, then windows row by row): token i of window j reads step order[j·wh·ww + i]."""
    (h, w), (wh, ww), (sh, sw) = grid, window, shift
    rolled = ((torch.arange(h) + sh) % h)[:, None] * w + (torch.arange(w) + sw) % w
    return rolled.view(h // wh, wh, w // ww, ww).permute(0, 2, 1, 3).flatten()


class WindowAttention(SelfAttention):
    """attention window=HxW: Swin's windowed attention on a token grid (torchvision's
    shifted_window_attention, windows that tile the grid): each window of wh·ww tokens attends within
    itself, its scores plus the relative position bias B ((2wh-1)(2ww-1), heads) read at each pair's
    offset and, with a shift, -100 between tokens of different regions of the rolled grid."""

    def __init__(self, dim: int, heads: int, grid, window, shift=(0, 0), bias: bool = True, dropout: float = 0.0,
                 keybias: bool = True):
        super().__init__(dim, heads, bias=bias, dropout=dropout, keybias=keybias)
        (h, w), (wh, ww), (sh, sw) = grid, window, shift
        self.tokens = wh * ww
        self.B = nn.Parameter(nn.init.trunc_normal_(torch.empty((2 * wh - 1) * (2 * ww - 1), heads), std=0.02))
        order = window_order(grid, window, shift)
        y, x = torch.arange(wh).repeat_interleave(ww), torch.arange(ww).repeat(wh)
        offsets = (y[:, None] - y + wh - 1) * (2 * ww - 1) + x[:, None] - x + ww - 1
        mask = torch.zeros(1, 1, self.tokens, self.tokens)
        if sh or sw:
            region = torch.zeros(h, w)
            rows, cols = ((slice(0, -k), slice(-k, -s), slice(-s, None)) for k, s in ((wh, sh), (ww, sw)))
            for i, (r, c) in enumerate((r, c) for r in rows for c in cols):
                region[r, c] = i
            region = region.view(h // wh, wh, w // ww, ww).permute(0, 2, 1, 3).reshape(-1, self.tokens)
            mask = (region[:, None, :] != region[:, :, None]).float().mul(-100.0)[:, None]
        for name, buffer in (("order", order), ("back", order.argsort()), ("offsets", offsets.flatten()), ("mask", mask)):
            self.register_buffer(name, buffer, persistent=False)

    def forward(self, x):
        n, t, d = x.shape
        windows, dh = x[:, self.order].view(n, -1, self.tokens, d), d // self.heads
        q, k, v = (F.linear(windows, w, b).view(n, -1, self.tokens, self.heads, dh).transpose(2, 3)
                   for w, b in ((self.Wq, self.bq), (self.Wk, self.bk), (self.Wv, self.bv)))
        bias = self.B[self.offsets].view(self.tokens, self.tokens, -1).permute(2, 0, 1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias + self.mask.to(x.dtype),
                                           dropout_p=self.dropout if self.training else 0.0)
        return F.linear(o.transpose(2, 3).reshape(n, t, d), self.Wo, self.bo)[:, self.back]


class RMSNorm(nn.Module):
    """rmsnorm: x / sqrt(mean(x²) + eps) * weight over the last axis (torch >= 2.4 has nn.RMSNorm; dlc's
    floor, 2.1, has not). dlc's gamma is `weight`."""

    def __init__(self, features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(features))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class GaussianNoise(nn.Module):
    """noise: x + sigma * N(0, 1) in training, the identity in inference."""

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma

    def forward(self, x):
        return x + self.sigma * torch.randn_like(x) if self.training else x


class DropPath(nn.Module):
    """droppath: each sample's whole input kept with probability 1 - p and scaled by 1/(1 - p), or zeroed,
    in training (stochastic depth on a residual branch); the identity in inference."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = torch.rand((len(x),) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device) >= self.p
        return x * keep / (1 - self.p)


class Weights(nn.Module):
    """Tensors a layer adds or puts in place without a module of torch's (posembed's P, clstoken's
    cls), by dlc's names; they start at zero until a checkpoint fills them (Net.load_dlc)."""

    def __init__(self, **shapes):
        super().__init__()
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.zeros(shape)))


class class_or_instance_method:
    """A method that receives the class when called on the class and the instance when called on one:
    `Net.load_dlc(path)` builds a network, `net.load_dlc(path)` fills net (a classmethod would
    silently build a new one and leave net as it was)."""

    def __init__(self, method):
        self.method = method

    def __get__(self, instance, owner):
        return self.method.__get__(owner if instance is None else instance)


NPY_DTYPES = {"<f4": torch.float32, "<f8": torch.float64, "<f2": torch.float16, "<i8": torch.int64,
              "<i4": torch.int32, "|u1": torch.uint8, "|b1": torch.bool}
META = "__dlc_meta__"  # the archive entry holding dlc's JSON metadata


def read_npz(path) -> tuple[dict, dict]:
    """(tensors by name, metadata) of a dlc checkpoint: a zip of .npy files (NumPy's format 1-3)."""
    tensors, meta = {}, {}
    with zipfile.ZipFile(path) as z:
        for entry in z.namelist():
            raw = z.read(entry)
            head = 10 if raw[6] == 1 else 12  # format 1.0 stores the header length in 2 bytes, later ones in 4
            size = int.from_bytes(raw[8:head], "little")
            header = ast.literal_eval(raw[head:head + size].decode("latin1"))
            data, shape, descr = raw[head + size:], header["shape"], header["descr"]
            if descr.startswith("<U"):  # the metadata: a NumPy unicode scalar, UTF-32
                meta = json.loads(data.decode("utf-32-le").rstrip("\0"))
                continue
            dtype = NPY_DTYPES[descr]
            t = torch.frombuffer(bytearray(data), dtype=dtype) if data else torch.zeros(0, dtype=dtype)
            if header["fortran_order"]:  # column-major bytes: the reversed shape, transposed back
                t = t.reshape(shape[::-1]).permute(*reversed(range(len(shape))))
            else:
                t = t.reshape(shape)
            tensors[entry.removesuffix(".npy")] = t.contiguous()
    return tensors, meta


def npy_bytes(descr: str, shape: tuple, data: bytes) -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    header += " " * (-(len(header) + 11) % 64) + "\n"  # NumPy aligns the data to 64 bytes
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin1") + data


def write_npz(path, tensors: dict, meta: dict) -> None:
    names = {v: k for k, v in NPY_DTYPES.items()}
    with zipfile.ZipFile(path, "w") as z:
        for name, t in tensors.items():
            t = t.detach().cpu().contiguous()
            data = ctypes.string_at(t.data_ptr(), t.numel() * t.element_size())  # the bytes, without NumPy
            z.writestr(name + ".npy", npy_bytes(names[t.dtype], tuple(t.shape), data))
        text = json.dumps(meta)
        z.writestr(META + ".npy", npy_bytes(f"<U{max(len(text), 1)}", (), text.encode("utf-32-le")))


def gate_blocks(t, order):
    """A recurrent tensor's gate blocks in another order: block k of the result is block order[k]."""
    blocks = t.chunk(len(order))
    return torch.cat([blocks[i] for i in order])


def to_torch_layout(table, arrays: dict) -> dict:
    """dlc's tensors (by dlc name) as the module's (by torch name), for the names `arrays` holds."""
    out = {}
    for name, key, direction, rows, gates in table:
        if name in arrays:
            t = arrays[name]
            t = t if direction is None else t[direction]
            t = t if rows is None else t[rows[0]:rows[1]]
            out[key] = t if gates is None else gate_blocks(t, gates)
    return out


def to_dlc_layout(table, tensors: dict) -> dict:
    """The module's tensors (by torch name) as dlc's (by dlc name), for the names `tensors` holds."""
    parts = {}
    for name, key, direction, rows, gates in table:
        if key in tensors:
            t = tensors[key]
            if gates is not None:  # block order[k] of dlc's tensor is block k of torch's
                t = gate_blocks(t, sorted(range(len(gates)), key=lambda k: gates[k]))
            parts.setdefault(name, {}).setdefault(direction, []).append((rows, t))
    out = {}
    for name, by_direction in parts.items():
        if None in by_direction:
            out[name] = by_direction[None][0][1]
        else:
            out[name] = torch.stack([torch.cat([t for _, t in sorted(by_direction[d], key=lambda p: p[0] or (0,))])
                                     for d in sorted(by_direction)])
    return out
