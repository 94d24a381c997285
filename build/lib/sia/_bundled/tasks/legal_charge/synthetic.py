"""An offline, seeded synthetic data set in LawBench 3-3's shape.

Facts ("事实:...") are 1-3 sentences built from per-charge act templates with slot fillers
(defendant, victim, place, date, amount, object); answers are real LawBench charge names.
No fact contains a charge name verbatim, so a model must learn the mapping act -> charge
rather than copy it. About ``multi_label_share`` of the items describe two acts (two charges).
"""
from __future__ import annotations

import random

from .data import FACT_PREFIX, LAWBENCH_INSTRUCTION

# Charge name (as in LawBench's charges.json) -> paraphrased act templates. Ordered by how
# common the charge is in real judgments, so ``n_charges`` keeps the most common ones.
CHARGE_ACTS: dict[str, list[str]] = {
    "盗窃": [
        "在{P}趁被害人{V}不备，秘密窃取其{O}，价值人民币{A}元",
        "撬开被害人{V}家的房门，偷走{O}及现金{A}元",
        "趁无人看管之机，将被害人{V}放在{P}的{O}偷偷拿走，经鉴定价值{A}元",
        "多次溜进{P}，偷拿被害人{V}的现金共计{A}元",
    ],
    "故意伤害": [
        "因琐事与被害人{V}发生争执，持木棍击打{V}头部，经鉴定{V}的损伤程度为轻伤二级",
        "在{P}与被害人{V}发生口角后，用拳头猛击其面部，致其鼻骨骨折，经鉴定为轻伤一级",
        "持水果刀将被害人{V}的腹部捅伤，经法医鉴定，{V}的损伤构成重伤二级",
        "因邻里纠纷对被害人{V}拳打脚踢，致其肋骨骨折，经鉴定属轻伤二级",
    ],
    "诈骗": [
        "冒充被害人{V}的朋友，以急需用钱为由，骗取{V}人民币{A}元后挥霍",
        "谎称能帮被害人{V}的孩子办理入学，先后骗得{V}现金{A}元",
        "通过微信虚构投资项目，诱使被害人{V}向其转账{A}元后将{V}拉黑",
        "以帮被害人{V}的亲属安排工作为名，收取好处费{A}元后失联",
    ],
    "危险驾驶": [
        "酒后驾驶小型轿车行驶至{R}时被民警查获，经检测其血液中乙醇含量为{BAC}mg/100ml",
        "醉酒后驾驶摩托车上路，在{R}被执勤交警拦下，其血液酒精含量为{BAC}mg/100ml",
        "大量饮酒后仍驾驶机动车，撞上路边停放的车辆，经鉴定其血液乙醇含量为{BAC}mg/100ml",
    ],
    "交通肇事": [
        "驾驶小型轿车行经{R}时未注意观察路况，撞倒行人{V}，{V}经抢救无效死亡，其负事故全部责任",
        "驾驶重型货车超速行驶，与被害人{V}驾驶的电动车相撞，致{V}当场死亡，其负事故主要责任",
        "驾驶机动车在{R}违章掉头，撞伤被害人{V}后驾车逃离现场，{V}经抢救无效死亡",
    ],
    "抢劫": [
        "在{P}持刀威胁被害人{V}，劫得{V}的{O}及现金{A}元",
        "将被害人{V}按倒在地并拳打脚踢，强行搜走其{O}和现金{A}元",
        "在偏僻路段拦住被害人{V}，以殴打相威胁，逼迫其交出现金{A}元",
    ],
    "寻衅滋事": [
        "酒后在{P}无故拦截路人被害人{V}，随意对其进行殴打，致其轻微伤",
        "在饭店内借故生非，随意砸毁店内桌椅并辱骂店主{V}，造成恶劣影响",
        "为逞强耍横，纠集他人在街头追逐、拦截被害人{V}，致{V}轻微伤",
    ],
    "走私、贩卖、运输、制造毒品": [
        "以人民币{A}元的价格向吸毒人员{V}出售甲基苯丙胺{G}克",
        "在{P}将海洛因{G}克卖给{V}，收取毒资{A}元",
        "通过微信联系买家{V}，向其出售毒品麻古{N}颗，得款{A}元",
    ],
    "容留他人吸毒": [
        "在其租住的房间内，提供场所让{V}、{V2}吸食甲基苯丙胺",
        "先后两次在自己家中提供吸毒工具和场所，供{V}等人吸食冰毒",
        "让{V}在其经营的宾馆房间内吸食毒品，并提供了吸食工具",
    ],
    "非法持有毒品": [
        "被公安民警抓获，民警从其随身携带的挎包内查获甲基苯丙胺{G}克",
        "在其驾驶的车内被查获冰毒{G}克，其供述毒品系用于自己吸食",
        "在其住处被民警搜出海洛因{G}克，其无法说明毒品用途",
    ],
    "掩饰、隐瞒犯罪所得、犯罪所得收益": [
        "明知是他人偷来的{O}，仍以{A}元的低价收购后转卖",
        "明知{O}系赃物，仍帮助他人将其转移并销售，从中获利{A}元",
        "在{P}以{A}元收购他人非法获取的{O}，并帮其隐藏赃物",
    ],
    "非法拘禁": [
        "因被害人{V}欠债不还，将其强行带至出租屋内关押两天",
        "为索要债务，伙同他人将被害人{V}限制在宾馆房间内长达{H}小时",
        "将被害人{V}锁在{P}的仓库内，限制其人身自由一昼夜",
    ],
    "故意毁坏财物": [
        "因琐事对被害人{V}心怀不满，用砖头砸坏其停放的轿车，经鉴定损失价值{A}元",
        "持铁棍将被害人{V}店铺的玻璃门窗砸毁，造成财物损失{A}元",
        "用钥匙划伤被害人{V}停在楼下的多辆汽车车漆，经鉴定修复费用为{A}元",
    ],
    "敲诈勒索": [
        "以曝光被害人{V}的隐私相威胁，向{V}索要人民币{A}元",
        "掌握被害人{V}的不雅照片后，以此要挟{V}支付封口费{A}元",
        "以举报被害人{V}偷税为由，多次向其勒要钱财共计{A}元",
    ],
    "信用卡诈骗": [
        "使用捡到的被害人{V}的信用卡，在商场刷卡消费{A}元",
        "恶意透支其名下信用卡，经银行多次催收后仍不归还，透支本金{A}元",
        "冒用被害人{V}的信用卡在ATM机上取现{A}元",
    ],
    "妨害公务": [
        "在民警依法执行职务时，拒不配合检查，并撕扯、推搡民警",
        "以暴力方法阻碍城管执法人员依法执行职务，将一名执法人员打伤",
        "不服交警处罚，对正在执法的交警拳打脚踢，致其轻微伤",
    ],
    "开设赌场": [
        "在其经营的茶楼内设置赌桌，组织他人打麻将押注，从中抽头渔利{A}元",
        "租用民房摆放老虎机{N}台供他人押注，非法获利{A}元",
        "建立网络投注平台招揽他人下注，抽取佣金共计{A}元",
    ],
    "职务侵占": [
        "利用担任某公司销售员的职务便利，将收取的货款{A}元据为己有",
        "在担任某物流公司仓库管理员期间，利用职务之便私自变卖公司货物，得款{A}元",
        "利用其负责公司财务收支的便利，将公司资金{A}元转入个人账户占为己有",
    ],
    "强奸": [
        "违背妇女{V}的意志，采用暴力手段强行与其发生性关系",
        "以送其回家为由将被害人{V}（女）骗至出租屋内，不顾其反抗强行与其发生性关系",
        "趁被害人{V}（女）醉酒无力反抗之机，强行与其发生了性关系",
    ],
    "合同诈骗": [
        "以签订建材购销合同为名，收取被害人{V}货款{A}元后逃匿",
        "在履行汽车租赁合同过程中，将租来的车辆私自抵押给他人，获取{A}元",
        "虚构工程项目，与被害人{V}签订承包合同，骗取保证金{A}元",
    ],
    "故意杀人": [
        "因感情纠纷怀恨在心，持菜刀朝被害人{V}颈部连砍数刀，致{V}当场死亡",
        "为报复被害人{V}，趁其熟睡之际用绳索勒住其颈部，致其窒息死亡",
        "与被害人{V}争吵后起意将其杀害，持尖刀刺中{V}胸部，{V}经抢救无效死亡",
    ],
    "受贿": [
        "在担任某镇副镇长期间，利用职务便利为{V}承揽工程提供帮助，收受{V}所送现金{A}元",
        "身为国家工作人员，利用职务之便为他人谋取利益，先后收受好处费共计{A}元",
        "利用担任某局科长的职务便利，在审批中为{V}提供关照，收受其所送购物卡{A}元",
    ],
    "聚众斗殴": [
        "因纠纷与{V}一方约定在{P}打架，双方各纠集十余人持棍棒互殴",
        "纠集多人持砍刀与{V}等人在街头相互殴斗，致多人受伤",
        "为争夺地盘，召集二十余人与{V}一伙在{P}持械群殴",
    ],
    "挪用资金": [
        "利用担任某公司出纳的职务便利，将公司资金{A}元挪作个人炒股，超过三个月未归还",
        "利用职务上的便利，私自将单位资金{A}元借给朋友使用，至案发时仍未归还",
        "利用保管公司账户的便利，挪出资金{A}元用于个人经营，数月后才归还",
    ],
    "赌博": [
        "以营利为目的，多次聚集他人以“炸金花”的方式赌钱，抽头获利{A}元",
        "伙同他人组织多人在{P}以掷骰子方式赌钱，从中抽水{A}元",
        "以营利为目的，招揽他人在其家中打牌赌钱，每局抽取头钱，共获利{A}元",
    ],
    "行贿": [
        "为承揽某市政工程，先后送给该局局长{V}现金共计{A}元",
        "为谋取不正当利益，给予国家工作人员{V}财物，价值{A}元",
        "为使其公司在招标中胜出，向主管官员{V}送去购物卡{A}元",
    ],
    "贪污": [
        "利用担任某村会计的职务便利，虚报冒领国家补贴款{A}元据为己有",
        "在担任某国有公司出纳期间，利用职务便利将公款{A}元转入自己的账户",
        "身为国家工作人员，利用经手财政资金的便利，侵吞公款{A}元",
    ],
    "抢夺": [
        "骑摩托车靠近被害人{V}，乘其不备一把夺走其挎包，包内有现金{A}元",
        "趁被害人{V}在路边接听电话之机，猛然夺下其手中的{O}后逃离",
        "从背后扯断被害人{V}佩戴的金项链后迅速逃跑，经鉴定价值{A}元",
    ],
    "非法侵入住宅": [
        "未经被害人{V}同意，撬锁进入{V}家中，经劝说后仍拒不退出",
        "为讨要说法，强行闯入被害人{V}的住宅，在屋内滞留一夜不肯离开",
        "翻墙进入被害人{V}家中，经{V}多次要求离开仍拒绝退出",
    ],
    "放火": [
        "因对被害人{V}不满，深夜在其家门口泼洒汽油并点燃，烧毁房屋",
        "为泄愤在{P}点燃堆放的杂物，火势蔓延烧毁多间商铺，造成损失{A}元",
        "用打火机点燃被害人{V}家的柴垛，致房屋被烧毁",
    ],
    "绑架": [
        "以勒索财物为目的，将被害人{V}的儿子强行掳走，向其家人索要赎金{A}元",
        "伙同他人将被害人{V}劫持至外地关押，并打电话向其家属勒要{A}元赎金",
        "以索取赎金为目的扣押被害人{V}作为人质，向{V}家属索要现金{A}元",
    ],
    "过失致人死亡": [
        "在工地驾驶叉车作业时疏于观察，将工友{V}撞倒，{V}经抢救无效死亡",
        "在自家院内修剪树枝时未设警示，锯下的树干砸中路过的{V}，致其死亡",
        "与被害人{V}推搡时不慎将其推下台阶，致{V}头部受伤，经抢救无效死亡",
    ],
}
ALL_CHARGES = tuple(CHARGE_ACTS)

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾萧田董袁潘蒋蔡余杜叶程"
PLACES = [
    "{city}一家超市内", "{city}某小区停车场", "{city}某网吧", "{city}某饭店门口",
    "{city}汽车站附近", "{city}某农贸市场", "{city}某宾馆", "{city}某工地",
]
CITIES = ["江城市", "临海市", "南山县", "青州市", "云溪县", "安平镇", "东湖区", "新华区"]
ROADS = ["人民路与建设路交叉口", "解放大道", "滨江路", "国道318线", "中山路口", "环城北路"]
OBJECTS = ["手机", "笔记本电脑", "电动自行车", "金项链", "手提包", "平板电脑", "摩托车", "手表"]
INTROS = [
    "{date}，被告人{D}",
    "经审理查明：{date}，被告人{D}",
    "公诉机关指控，{date}，被告人{D}",
    "{date}许，被告人{D}",
]
CONNECTORS = ["；此后，被告人{D}又", "；同月，其还", "；次日，被告人{D}又"]
ENDINGS = [
    "", "", "",
    "案发后，被告人{D}被公安机关抓获。",
    "被告人{D}到案后如实供述了上述事实。",
    "案发后，被告人{D}主动投案。",
]
MIN_CHARS, MAX_CHARS = 60, 160


def _slots(rng: random.Random) -> dict[str, str]:
    surnames = rng.sample(SURNAMES, 3)
    given = lambda: "某" if rng.random() < 0.7 else "某某"  # noqa: E731
    date = f"{rng.randint(2013, 2019)}年{rng.randint(1, 12)}月{rng.randint(1, 28)}日"
    if rng.random() < 0.5:
        date += f"{rng.randint(0, 23)}时"
    return {
        "D": surnames[0] + given(),
        "V": surnames[1] + given(),
        "V2": surnames[2] + given(),
        "date": date,
        "P": rng.choice(PLACES).format(city=rng.choice(CITIES)),
        "R": rng.choice(ROADS),
        "O": rng.choice(OBJECTS),
        "A": str(rng.choice([rng.randint(5, 99) * 100, rng.randint(1000, 60000)])),
        "G": f"{rng.randint(1, 400) / 10:g}",
        "N": str(rng.randint(3, 30)),
        "H": str(rng.randint(10, 72)),
        "BAC": str(rng.randint(81, 260)),
    }


def make_fact(charges: list[str], rng: random.Random) -> str:
    """One fact describing one act per charge (1-3 sentences, 60-160 characters)."""
    for _ in range(100):
        slots = _slots(rng)
        acts = [rng.choice(CHARGE_ACTS[c]) for c in charges]
        body = rng.choice(INTROS) + acts[0]
        for act in acts[1:]:
            body += rng.choice(CONNECTORS) + act
        body += "。" + rng.choice(ENDINGS)
        body = body.format(**slots)
        if MIN_CHARS <= len(body) <= MAX_CHARS:
            return FACT_PREFIX + body
    raise RuntimeError(f"no fact within {MIN_CHARS}-{MAX_CHARS} characters for {charges}")


def _make_split(name, n, charges, multi_share, seed, seen):
    rng = random.Random(f"legal_charge-synthetic-{seed}-{name}")
    # Balanced first charges (every charge equally often), a fixed share of two-charge items.
    firsts = [charges[i % len(charges)] for i in range(n)]
    rng.shuffle(firsts)
    multi = set(rng.sample(range(n), round(n * multi_share))) if len(charges) > 1 else set()
    records = []
    for i, first in enumerate(firsts):
        gold = [first]
        if i in multi:
            gold.append(rng.choice([c for c in charges if c != first]))
        fact = make_fact(gold, rng)
        while fact in seen:  # no fact shared across splits (or repeated within one)
            fact = make_fact(gold, rng)
        seen.add(fact)
        records.append({
            "id": f"syn-{name}-{i:04d}",
            "fact": fact,
            "charges": gold,
            "instruction": LAWBENCH_INSTRUCTION,
        })
    return records


def generate(
    seed: int = 0,
    n_charges: int = 24,
    n_train: int = 240,
    n_val: int = 60,
    n_test: int = 80,
    multi_label_share: float = 0.15,
) -> dict[str, list[dict]]:
    """Train/val/test records. Each split has its own seeded stream and test is made first,
    so changing ``n_train`` never changes val or test."""
    if not 1 <= n_charges <= len(ALL_CHARGES):
        raise ValueError(f"n_charges must be in 1..{len(ALL_CHARGES)}, got {n_charges}")
    charges = list(ALL_CHARGES[:n_charges])
    seen: set[str] = set()
    splits = {}
    for name, n in (("test", n_test), ("val", n_val), ("train", n_train)):
        splits[name] = _make_split(name, n, charges, multi_label_share, seed, seen)
    return {"train": splits["train"], "val": splits["val"], "test": splits["test"]}


def charge_names(n_charges: int) -> list[str]:
    return list(ALL_CHARGES[:n_charges])
