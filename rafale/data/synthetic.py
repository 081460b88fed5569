"""The embedded story corpus: simple English short stories from a seeded template grammar.

`generate_stories()` makes 6,000 stories in the spirit of TinyStories: a named kid or animal, a friend,
a place, an object, and one of eight plot arcs (something lost, something found, a friend in trouble, a
storm, a race, sharing, a new friend, trying again). Each beat of an arc picks one of several sentences
and fills its slots, so stories share a grammar but rarely a paragraph. Most open with "Once upon a time"
or "One day" (the quickstart prompt) and close with a moral.

Size with the defaults (n=6000, seed=0): 726k words (whitespace split; 80 to 175 per story, mean 121),
3.75M characters, 914 distinct word types (lowercased runs of letters); 60% of stories open with "Once
upon a time" and 30% with "One day". Generation takes ~0.16 s on one CPU core. Stories are kept only if
they have 80-250 words and are new, so the list has no duplicates, and `generate_stories(k)` is a prefix
of `generate_stories(n)` for k < n.

Why: the quickstart must train on a fresh machine with no network, so its corpus lives in the package. It
is deterministic (only `random.Random(seed)`: no global random state, no string hashing). It has
structure a tiny model can learn fast (on 300 held-out stories, a word bigram model needs 3.1 bits a word
against 8.8 for a unigram model) and too many combinations to memorise (distinct 8-grams are 42% of all
8-grams).
"""

import random

from rafale.errors import DataError

# ---------------------------------------------------------------------------------------------- vocabulary
GIRLS = ["Lily", "Mia", "Emma", "Sara", "Anna", "Lucy", "Zoe", "Ella", "Amy", "Rosa", "Nora", "Ava",
         "Chloe", "Ruby", "Maya", "Sophie", "Grace", "Hannah", "Ivy", "Jane", "Kate", "Molly", "Nina",
         "Olive", "Rose", "Tess", "Wendy", "Clara", "Daisy", "Layla"]
BOYS = ["Tom", "Ben", "Sam", "Leo", "Jack", "Tim", "Finn", "Noah", "Oscar", "Eli", "Jake", "Luke", "Owen",
        "Paul", "Ryan", "Theo", "Hugo", "Dan", "Alex", "Milo", "Ollie", "Henry", "Kai", "Adam", "Billy",
        "Toby", "Jonah", "Peter", "Ethan", "Ravi"]
PET_NAMES = ["Spot", "Fluffy", "Buddy", "Pip", "Coco", "Biscuit", "Pepper", "Sunny", "Patch", "Ziggy",
             "Nutmeg", "Honey", "Rusty", "Sparky", "Tiny", "Bella", "Rex", "Luna", "Snowy", "Muffin",
             "Peanut", "Pebble", "Button", "Maple", "Ginger", "Bingo", "Oreo", "Twinkle", "Acorn", "Jelly"]
ANIMALS = ["dog", "cat", "bunny", "bear", "bird", "fox", "duck", "mouse", "frog", "turtle", "owl",
           "squirrel", "lion", "pig", "puppy", "kitten", "elephant", "horse", "cow", "sheep", "goat",
           "hedgehog", "deer", "penguin", "monkey", "giraffe", "raccoon", "otter", "hen", "tiger"]
TRAITS = ["little", "small", "kind", "brave", "shy", "curious", "happy", "clever", "cheerful", "gentle",
          "playful", "friendly", "silly", "busy", "young", "eager", "quiet", "lively", "sweet", "smart"]
PARENTS = ["mom", "dad", "grandma", "grandpa", "aunt", "uncle", "big sister", "big brother"]
HOBBIES = ["play outside", "draw pictures", "sing songs", "read books", "run and jump", "build tall towers",
           "look at the stars", "dance in the rain", "help in the garden", "ride {his} bike",
           "collect pretty rocks", "play with {his} toys", "splash in puddles", "climb trees",
           "bake cookies with {his} {parent}", "watch the birds", "make funny faces", "paint with bright colors"]
TIMES = ["One day", "One sunny morning", "One breezy afternoon", "One fine day", "One warm summer evening",
         "One windy autumn day", "One bright spring morning", "One quiet Sunday", "One bright morning",
         "Early one morning", "Last summer", "One cloudy day"]
SAD = ["sad", "upset", "worried", "unhappy", "gloomy", "lonely"]
HAPPY = ["happy", "glad", "joyful", "proud", "cheerful", "thankful", "delighted"]
OBJECTS = ["ball", "kite", "toy car", "teddy bear", "hat", "shoe", "book", "crayon", "shell", "key", "box",
           "balloon", "drum", "toy boat", "blanket", "umbrella", "cup", "ring", "feather", "sock", "scarf",
           "doll", "bell", "marble", "whistle", "mitten", "backpack", "robot", "toy train", "necklace",
           "bracelet", "spinning top", "puppet", "flag", "wand", "stuffed rabbit", "ribbon", "truck"]
OBJECT_ADJS = ["red", "blue", "green", "yellow", "orange", "purple", "pink", "shiny", "little", "old", "new",
               "soft", "striped", "spotted", "tiny", "big", "golden", "silver", "bright", "fuzzy"]
# (where to go, where it happens, what is there, places where a thing can hide)
OUTDOOR = [
    ("the park", "at the park", ["children laughed on the swings", "ducks swam in the little pond"],
     ["under the slide", "behind a bench", "next to the swings", "in the sandbox", "under a big oak tree"]),
    ("the forest", "in the forest", ["tall trees whispered in the wind", "birds sang high in the branches"],
     ["inside a hollow log", "under a mossy rock", "behind a bush with red berries", "near a little stream"]),
    ("the beach", "at the beach", ["the waves rolled onto the sand", "seagulls flew over the water"],
     ["under a pile of seaweed", "behind a sandcastle", "next to a big rock", "under a striped towel"]),
    ("the garden", "in the garden", ["the flowers were bright and tall", "bees buzzed from flower to flower"],
     ["under the tomato plants", "behind the watering can", "in a pile of leaves", "next to the gate"]),
    ("the farm", "on the farm", ["the cows ate fresh grass", "the hens clucked in the yard"],
     ["in the hay", "behind the tractor", "next to the water trough", "under the wooden fence"]),
    ("the meadow", "in the meadow", ["butterflies danced over the grass", "the grass was soft and green"],
     ["under a patch of daisies", "behind a tall rock", "near a rabbit hole", "in the long grass"]),
    ("the river", "by the river", ["the water sparkled in the sun", "frogs jumped from stone to stone"],
     ["under the little bridge", "between two stones", "in the reeds", "next to an old boat"]),
    ("the hill", "on the hill", ["you could see the whole town from the top", "the wind blew softly"],
     ["behind a fallen tree", "under a prickly bush", "near the old windmill", "in a tiny hole"]),
    ("the playground", "on the playground", ["kids ran and shouted", "the seesaw went up and down"],
     ["under the seesaw", "at the bottom of the slide", "behind the climbing frame", "near the fountain"]),
    ("the lake", "by the lake", ["swans glided on the water", "the lake was calm and blue"],
     ["under the dock", "behind a canoe", "in the tall reeds", "next to a picnic table"]),
    ("the backyard", "in the backyard", ["the sun warmed the grass", "a bird sang on the fence"],
     ["under the porch", "behind the shed", "in the flower bed", "next to the dog house"]),
    ("the zoo", "at the zoo", ["the monkeys swung from the ropes", "a big elephant splashed in the water"],
     ["near the penguin pool", "under a bench", "behind the ice cream cart", "by the giraffe house"]),
]
INDOOR = [
    ("the kitchen", "in the kitchen", ["the oven smelled of warm bread", "pots and pans hung on the wall"],
     ["under the table", "behind the cookie jar", "inside a drawer", "next to the fridge"]),
    ("the library", "in the library", ["the shelves were full of books", "everyone spoke in soft voices"],
     ["behind a row of books", "under a reading chair", "on a high shelf", "next to the big globe"]),
    ("school", "at school", ["the teacher smiled at the class", "paintings covered the walls"],
     ["inside a desk", "under the teacher's chair", "in the coat room", "behind the bookcase"]),
    ("the attic", "in the attic", ["old boxes were stacked high", "dust danced in the light"],
     ["inside an old trunk", "under a dusty sheet", "behind a rocking chair", "in a basket of yarn"]),
    ("the barn", "in the barn", ["the horses stamped their feet", "the hay smelled sweet"],
     ["under a pile of straw", "behind a bucket", "next to the ladder", "in an empty stall"]),
    ("the bakery", "at the bakery", ["the air smelled of cake", "the baker sang while she worked"],
     ["under the counter", "behind a sack of flour", "next to the bread basket", "on a window sill"]),
]
FINDINGS = [  # (what was found, what happens next)
    ("a small blue egg", ["They kept the egg warm in a soft blanket.",
                          "A few days later, the egg cracked, and a tiny bird peeked out."]),
    ("an old wooden box", ["Inside the box there were shiny buttons and an old photo.",
                           "The photo showed {his} {parent} as a little child!"]),
    ("a rolled-up map", ["The map showed a path to a big tree with an X under it.",
                         "Under the tree they found a tin full of marbles and a note that said hello."]),
    ("a shiny key", ["They tried the key on every door they could find.",
                     "At last it opened a little gate, and behind it was a secret garden full of roses."]),
    ("a glass bottle with a letter inside", ["The letter was from a child who lived far away across the sea.",
                                              "{hero} wrote a letter back and sent it with the next boat."]),
    ("a tiny lost kitten", ["The kitten was cold and hungry, so they gave it some warm milk.",
                            "Soon the kitten was purring and playing with a ball of string."]),
]
OWNERS = ["an old man with a cane", "a little girl with curly hair", "a sad bear", "a lady with a red hat",
          "a farmer in big boots", "a boy with a yellow coat", "a worried mother duck"]
TROUBLES = [  # (what went wrong for the friend, how the hero helped)
    ("{friend} was stuck high up in a tree and could not get down.",
     "{hero} found a long branch and helped {fhim} climb down slowly."),
    ("{friend} was stuck in a muddy puddle.", "{hero} held out {his} hand and pulled {fhim} out."),
    ("{friend} had dropped {fhis} apples, and they rolled everywhere.",
     "{hero} ran around and picked up every single apple."),
    ("{friend} had lost {fhis} way home.", "{hero} walked with {fhim} all the way back to {fhis} house."),
    ("{friend} had a thorn in {fhis} paw.", "{hero} gently pulled the thorn out and wrapped the paw in a leaf."),
    ("{friend} could not reach the berries at the top of the bush.",
     "{hero} climbed on a rock and picked the berries for {fhim}."),
    ("{friend} had a heavy basket that was too big to carry.", "{hero} took one handle and they carried it together."),
    ("{friend}'s kite was caught on the roof.",
     "{hero} asked {his} {parent} for a ladder, and they got the kite back."),
]
SKILLS = [  # (what to learn, where to practise, how it went wrong, how it went right)
    ("ride a bike", "on the street", "{he} wobbled and fell down.", "{He} rode all the way to the end of the street."),
    ("swim", "at the pool", "{he} splashed and swallowed water.", "{He} swam from one side of the pool to the other."),
    ("bake a cake", "in the kitchen", "the cake came out flat and burnt.", "The cake came out tall, soft and sweet."),
    ("fly a kite", "in the meadow", "the kite crashed into a bush.", "The kite flew high above the trees."),
    ("tie {his} shoes", "on the front steps", "the laces got all tangled.", "{He} tied two perfect bows."),
    ("build a sandcastle", "at the beach", "a wave washed it away.", "{He} built a castle with four tall towers."),
    ("jump rope", "on the playground", "{he} tripped over the rope.", "{He} jumped twenty times without stopping."),
    ("skate on the ice", "on the frozen pond", "{he} slipped and landed on the ice.",
     "{He} glided across the pond like a bird."),
    ("whistle", "in the backyard", "only air came out.", "A loud, clear whistle came out!"),
    ("play the drum", "in {his} room", "the beat was too fast and too loud.",
     "{He} played a song that made everyone dance."),
]
SHARE_ITEMS = [  # (plural things, what the friend asks, what they did together)
    ("cookies", "Can I have one too?", "They ate the cookies together under a tree."),
    ("strawberries", "Can I have one too?", "They ate the sweet strawberries and laughed at their red lips."),
    ("apples", "Can I have one too?", "They sat on the grass and ate the crunchy apples."),
    ("cupcakes", "Can I have one too?", "They shared the cupcakes and licked the frosting off their fingers."),
    ("crayons", "Can I draw too?", "They drew a big picture of a dragon together."),
    ("building blocks", "Can I play too?", "They built the tallest tower they had ever seen."),
    ("toy cars", "Can I play too?", "They raced the toy cars down a long ramp."),
    ("marbles", "Can I play too?", "They rolled the marbles and watched them click together."),
]
GAMES = ["tag", "hide and seek", "catch", "with my blocks", "in the sand", "with my ball", "jump rope"]
LANDMARKS = ["the big tree", "the old fence", "the red barn", "the top of the hill", "the river", "the gate"]
SHELTERS = ["into a little cave", "into an old shed", "into the barn", "under the porch", "back home"]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _say(rng: random.Random, c: dict, options: list[str]) -> str:
    return rng.choice(options).format(**c)


def _character(rng: random.Random, avoid: str = "") -> dict:
    while True:
        gender = rng.choice(["he", "she"])
        if rng.random() < 0.55:
            kind, name = ("boy", rng.choice(BOYS)) if gender == "he" else ("girl", rng.choice(GIRLS))
        else:
            kind, name = rng.choice(ANIMALS), rng.choice(PET_NAMES)
        if name != avoid:
            him, his = ("him", "his") if gender == "he" else ("her", "her")
            return {"name": name, "kind": kind, "he": gender, "him": him, "his": his}


def _cast(rng: random.Random, outdoor: bool) -> dict:
    """Every slot a sentence may name: {hero} {he} {him} {his} {He} {His}, the friend's {friend} {fhe} ...,
    the place's {place} {at} {At} {sight} {spot1..3}, the object's {obj} {obj_adj} {obj_a}, and so on."""
    hero = _character(rng)
    friend = _character(rng, avoid=hero["name"])
    to, at, sights, spots = rng.choice(OUTDOOR if outdoor else OUTDOOR + INDOOR)
    obj_adj = rng.choice(OBJECT_ADJS)
    c = {"hero": hero["name"], "he": hero["he"], "him": hero["him"], "his": hero["his"],
         "He": hero["he"].capitalize(), "His": hero["his"].capitalize(),
         "hero_desc": f"{_a(rng.choice(TRAITS))} {hero['kind']} named {hero['name']}",
         "friend": friend["name"], "fkind": friend["kind"], "fhe": friend["he"], "fhim": friend["him"],
         "fhis": friend["his"], "Fhe": friend["he"].capitalize(),
         "friend_desc": f"{_a(rng.choice(TRAITS))} {friend['kind']} named {friend['name']}",
         "parent": rng.choice(PARENTS), "time": rng.choice(TIMES), "place": to, "at": at,
         "At": at.capitalize(), "sight": rng.choice(sights), "obj": rng.choice(OBJECTS), "obj_adj": obj_adj,
         "sad": rng.choice(SAD), "happy": rng.choice(HAPPY), "landmark": rng.choice(LANDMARKS)}
    c["spot1"], c["spot2"], c["spot3"] = rng.sample(spots, 3)
    c["hobby"] = rng.choice(HOBBIES).format(**c)
    c["obj_a"], c["fkind_a"] = _a(f"{obj_adj} {c['obj']}"), _a(friend["kind"])
    c["shelter"] = rng.choice(SHELTERS)
    return c


# --------------------------------------------------------------------------------------------- story beats
def _opening(rng: random.Random, c: dict) -> list[str]:
    hobby = _say(rng, c, ["{He} loved to {hobby}.", "{He} liked to {hobby} more than anything.",
                          "Every day, {he} would {hobby}.", "{His} favorite thing to do was to {hobby}."])
    r = rng.random()
    if r < 0.3:
        first = _say(rng, c, ["One day, {hero_desc} went to {place} with {his} {parent}.",
                              "One day, {hero_desc} was playing {at}.",
                              "One day, {hero_desc} woke up early and went to {place}."])
        return [first, hobby]
    if r < 0.9:
        first = _say(rng, c, ["Once upon a time, there was {hero_desc}.",
                              "Once upon a time, there lived {hero_desc}.",
                              "Once upon a time, in a little town, there lived {hero_desc}.",
                              "Once upon a time, {hero_desc} lived in a cozy house with {his} {parent}."])
    else:
        first = _say(rng, c, ["There was once {hero_desc}.", "Long ago, there lived {hero_desc}.",
                              "In a small village by the sea, there lived {hero_desc}."])
    go = _say(rng, c, ["{time}, {he} went to {place}.", "{time}, {hero} and {his} {parent} went to {place}.",
                       "{time}, {hero} decided to go to {place}."])
    return [first, hobby, go]


def _lost(rng: random.Random, c: dict) -> tuple[list[str], list[str]]:
    out = [_say(rng, c, ["{He} had {obj_a} that {he} loved very much.",
                         "{His} {parent} had given {him} {obj_a} for {his} birthday.",
                         "{He} always took {his} {obj_adj} {obj} everywhere."]),
           _say(rng, c, ["{He} played with the {obj} {at}.", "{At}, {sight}, and {hero} played with the {obj}."]),
           _say(rng, c, ["But when it was time to go home, the {obj} was gone!",
                         "When {he} turned around, the {obj} was not there.",
                         "Then {he} put the {obj} down for a moment, and it was gone."]),
           _say(rng, c, ["{He} felt very {sad}.", "{His} eyes filled with tears.", "{He} sat down and began to cry."]),
           _say(rng, c, ['"Where is my {obj}?" {he} cried.', '"I lost my {obj}!" {hero} said in a small voice.']),
           _say(rng, c, ["Just then, {friend_desc} came by.", "Just then, {his} friend {friend} walked over."]),
           _say(rng, c, ['"Don\'t worry, I will help you look," said {friend}.',
                         '"Let\'s look together," said {friend}. "Two pairs of eyes are better than one."']),
           _say(rng, c, ["They looked {spot1}, but it was not there.", "First they searched {spot1}. Nothing!"])]
    if rng.random() < 0.5:
        out.append(_say(rng, c, ["Then they looked {spot2}, but it was not there either.",
                                 "They checked {spot2} too, but they only found a leaf."]))
    out += [_say(rng, c, ["At last, {friend} found the {obj} {spot3}!",
                          "Then {hero} saw something {obj_adj} {spot3}. It was the {obj}!"]),
            _say(rng, c, ['"Thank you, {friend}!" {hero} said. "You are a good friend."',
                          "{hero} hugged {his} {obj} and smiled a big smile."])]
    return out, ["From that day on, {hero} always kept {his} {obj} safe.",
                 "{hero} learned that friends make hard things easier.",
                 "{hero} learned to take good care of {his} things."]


def _found(rng: random.Random, c: dict) -> tuple[list[str], list[str]]:
    thing, reveal = rng.choice(FINDINGS)
    out = [_say(rng, c, ["{He} was walking {at} when {he} saw something strange {spot1}.",
                         "{At}, {sight}. Then {hero} saw something {spot1}."]),
           _say(rng, c, ["{He} went closer to look.", "{He} bent down and picked it up."]),
           f"It was {thing}!",
           _say(rng, c, ['"What could this be?" {he} wondered.', '"Wow!" {hero} whispered.']),
           _say(rng, c, ["{He} ran to show {his} friend {friend}.", "{He} showed it to {his} {parent}."])]
    if rng.random() < 0.5:
        out += [line.format(**c) for line in reveal]
        return out, ["{hero} learned that the world is full of surprises for those who look.",
                     "It pays to be curious and careful at the same time."]
    c["owner"] = rng.choice(OWNERS)
    out += [_say(rng, c, ["Later, they met {owner} who was looking for something.",
                          "Soon they saw {owner} searching everywhere."]),
            '"Is this yours?" asked {hero}.'.format(**c),
            '"Yes! Thank you so much!" came the happy answer.',
            _say(rng, c, ["{hero} felt warm and {happy} inside.", "{hero} smiled all the way home."])]
    return out, ["{hero} learned that being honest feels good.", "When you find something, give it back."]


def _help(rng: random.Random, c: dict) -> tuple[list[str], list[str]]:
    trouble, fix = rng.choice(TROUBLES)
    out = [_say(rng, c, ["Suddenly, {hero} heard someone crying.",
                         "{He} was walking {at} when {he} heard a small voice."]),
           _say(rng, c, ["It was {friend_desc}.", "It was {his} friend {friend}, {fkind_a}."]),
           trouble.format(**c),
           _say(rng, c, ['"Help! Help!" cried {friend}.', '"Can you help me?" asked {friend}.']),
           _say(rng, c, ["{hero} thought for a moment.", "{hero} was small, but {he} wanted to help."]),
           fix.format(**c),
           _say(rng, c, ['"Thank you!" said {friend}. "You are very kind."',
                         "{friend} smiled and gave {hero} a big hug."]),
           _say(rng, c, ["Then they played together until the sun went down.",
                         "After that, they walked home together, singing a happy song."])]
    return out, ["It is good to help others when they need it.", "Helping {friend} made {hero} feel {happy} all day.",
                 "{hero} learned that a small helper can do big things."]


def _storm(rng: random.Random, c: dict) -> tuple[list[str], list[str]]:
    out = [_say(rng, c, ["{hero} and {friend} were playing {at}.", "{He} was flying a kite {at} with {friend}."]),
           _say(rng, c, ["The sky was blue and the sun was warm.", "{At}, {sight}."]),
           _say(rng, c, ["But then, the sky turned dark and gray.", "Suddenly, big black clouds covered the sun."]),
           _say(rng, c, ["The wind began to blow hard, and the trees shook.", "Big drops of rain began to fall."]),
           _say(rng, c, ["Boom! Thunder rolled across the sky.", "Crack! A flash of lightning lit up the sky."]),
           _say(rng, c, ['"I am scared!" cried {friend}.', "{friend} was so scared that {fhe} started to shake."]),
           _say(rng, c, ['"Don\'t be afraid," said {hero}. "Let\'s find a safe place."',
                         "{hero} took {friend}'s hand. \"Come with me,\" {he} said."]),
           _say(rng, c, ["They ran {shelter} and waited.", "Together they hurried {shelter}."]),
           _say(rng, c, ["They sat close together and told stories.", "They sang a song to feel brave."]),
           _say(rng, c, ["Soon, the rain stopped, and the sun came out again.",
                         "After a while, the storm was over."]),
           _say(rng, c, ["A big rainbow stretched across the sky.", "They jumped in the puddles and laughed."])]
    return out, ["{hero} learned that being brave is easier with a friend.",
                 "Even the biggest storm ends, and the sun always comes back."]


def _race(rng: random.Random, c: dict) -> tuple[list[str], list[str]]:
    out = [_say(rng, c, ["{friend} was very fast, and {fhe} liked to show off.",
                         "{friend} said {fhe} was the fastest in all the land."]),
           _say(rng, c, ['"Let\'s have a race to {landmark}!" said {friend}.', '"I can beat anyone!" {friend} said.']),
           "{hero} was not very fast, but {he} said yes.".format(**c),
           _say(rng, c, ['"Ready, set, go!" shouted {his} {parent}.', '"Ready, set, go!" shouted a wise old owl.'])]
    if rng.random() < 0.5:
        out += [_say(rng, c, ["{friend} ran so fast that {fhe} was soon far ahead.", "{friend} zoomed away."]),
                "{Fhe} was sure {fhe} would win, so {fhe} sat down to rest under a tree.".format(**c),
                "Soon, {fhe} fell fast asleep.".format(**c),
                _say(rng, c, ["{hero} kept going, step by step.", "{hero} did not stop, not even once."]),
                "When {friend} woke up, {hero} was already at {landmark}!".format(**c)]
        return out, ["Slow and steady wins the race.", "{friend} learned not to show off."]
    out += [_say(rng, c, ["Halfway there, {friend} tripped over a rock and hurt {fhis} knee.",
                          "Suddenly, {friend} slipped on some wet leaves and fell down."]),
            "{hero} stopped running and went back to help.".format(**c),
            _say(rng, c, ['"Are you okay?" asked {hero}.', '"Let me help you up," said {hero}.']),
            "They walked to {landmark} together, side by side.".format(**c),
            _say(rng, c, ["Everyone cheered for them both.", "{friend} smiled. \"Thank you for stopping.\""])]
    return out, ["Being kind is better than winning.", "{hero} knew that a good friend is worth more than a prize."]


def _share(rng: random.Random, c: dict) -> tuple[list[str], list[str]]:
    items, ask, together = rng.choice(SHARE_ITEMS)
    c["items"] = items
    out = [_say(rng, c, ["{His} {parent} gave {him} a basket of {items}.", "{hero} had a big box of {items}."]),
           _say(rng, c, ["{He} sat down {at} to enjoy them.", "{He} carried them carefully to {place}."]),
           "{friend} sat all alone nearby and looked at the {items}.".format(**c),
           f'"{ask}" asked {c["friend"]}.']
    if rng.random() < 0.5:
        out += ["At first, {hero} did not want to share.".format(**c),
                _say(rng, c, ['"They are mine," {he} said, and held them close.', '"No," said {hero}.']),
                "{friend} looked down and walked away slowly.".format(**c),
                _say(rng, c, ["{hero} felt a funny feeling in {his} tummy.", "{hero} did not feel {happy} anymore."]),
                '{He} ran after {friend}. "Wait! You can have some of my {items}," {he} said.'.format(**c)]
    else:
        out.append(_say(rng, c, ['"Of course!" said {hero}. "Sharing is more fun."',
                                 '"Yes, come and sit with me!" said {hero}.']))
    out += [together, _say(rng, c, ["Sharing made everything more fun.", "{friend} gave {hero} a big smile."])]
    return out, ["{hero} learned that sharing makes everyone happy.", "When we share, we have more fun together."]


def _new_friend(rng: random.Random, c: dict) -> tuple[list[str], list[str]]:
    c["game"] = rng.choice(GAMES)
    out = [_say(rng, c, ["That week, a new {fkind} moved in next door.",
                         "{At}, {hero} saw {friend_desc} sitting alone."]),
           _say(rng, c, ["The {fkind} looked shy and a little {sad}.", "Nobody was playing with the {fkind}."]),
           _say(rng, c, ["{hero} felt shy too.", "{hero} wanted to say hello, but {he} did not know what to say."]),
           'Then {he} remembered what {his} {parent} always said: "A smile is the best way to start."'.format(**c),
           '{hero} walked over and smiled. "Hi! I am {hero}. What is your name?"'.format(**c),
           '"I am {friend}," said the {fkind} quietly.'.format(**c),
           '"Do you want to play {game} with me?" asked {hero}.'.format(**c),
           _say(rng, c, ['{friend}\'s face lit up. "Yes, please!"', '"I would love to!" said {friend}.']),
           _say(rng, c, ["They ran and laughed all afternoon.", "They built a big castle out of sticks and leaves."]),
           "By the end of the day, they were best friends."]
    return out, ["A kind hello can make a new friend.",
                 "{hero} learned that everyone feels shy sometimes, and a smile can help."]


def _try_again(rng: random.Random, c: dict) -> tuple[list[str], list[str]]:
    skill, where, fail, success = (s.format(**c) for s in rng.choice(SKILLS))
    out = [_say(rng, c, [f"{{hero}} wanted to learn to {skill}.", f"{{hero}} really wanted to {skill}."]),
           f"The first time {c['he']} tried, {fail}",
           _say(rng, c, ["{He} felt {sad} and wanted to give up.", '"I will never be able to do it," {he} said.']),
           _say(rng, c, ['{His} friend {friend} sat next to {him}. "Nobody gets it right at first. Try again!"',
                         '{His} {parent} smiled and said, "Practice a little every day, and you will see."']),
           _say(rng, c, ["So {hero} tried again, and again, and again.", f"Every day, {{he}} practiced {where}."]),
           success,
           _say(rng, c, ['"I did it!" {hero} shouted with joy.', "{His} {parent} clapped and cheered."])]
    return out, ["{hero} learned that if you keep trying, you can do hard things.",
                 "Never give up, even when something is hard."]


# (plot arc, whether it needs an outdoor place)
ARCS = [(_lost, False), (_found, True), (_help, True), (_storm, True), (_race, True), (_share, False),
        (_new_friend, False), (_try_again, False)]
CLOSINGS = ["That night, {hero} fell asleep with a big smile.", "It was the best day ever.",
            "And {he} never forgot that day.", "From that day on, {hero} and {friend} were the best of friends."]


def _story(rng: random.Random) -> str:
    arc, outdoor = rng.choice(ARCS)
    c = _cast(rng, outdoor)
    sentences = _opening(rng, c)
    middle, morals = arc(rng, c)
    sentences += middle + [_say(rng, c, morals)]
    if rng.random() < 0.6:
        sentences.append(_say(rng, c, CLOSINGS))
    return " ".join(sentences)


def generate_stories(n: int = 6000, seed: int = 0) -> list[str]:
    """Make `n` distinct short stories, the same ones for the same seed.

    Args:
        n: how many stories.
        seed: seeds a private `random.Random`; global random state is neither read nor changed.

    Returns:
        A list of `n` distinct stories of 80-250 words each, one paragraph per story.
    """
    rng = random.Random(seed)
    stories, seen = [], set()
    while len(stories) < n:
        story = _story(rng)
        if 80 <= len(story.split()) <= 250 and story not in seen:
            seen.add(story)
            stories.append(story)
    return stories


SOURCES = {"stories": generate_stories}


def load_synthetic(name: str, n: int | None = None, seed: int = 0) -> list[str]:
    """The texts of the embedded corpus `name`, as named by a data source `synthetic:<name>`.

    Args:
        name: a key of `SOURCES`, e.g. "stories".
        n: how many texts; None means the generator's default.
        seed: passed to the generator.

    Raises:
        DataError: `name` is not a known corpus, or `n` is not positive.
    """
    if name not in SOURCES:
        raise DataError(f"synthetic:{name}: unknown synthetic corpus {name!r}; "
                        f"available: {', '.join('synthetic:' + k for k in SOURCES)}")
    if n is None:
        return SOURCES[name](seed=seed)
    if n < 1:
        raise DataError(f"synthetic:{name}: n must be a positive number of texts, got {n}")
    return SOURCES[name](n=n, seed=seed)
